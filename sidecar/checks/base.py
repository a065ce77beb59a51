"""The contract every check kind fulfils."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Protocol

from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, bounded

#: A result's ``detail`` is cut to this many characters.
DETAIL_LIMIT = 200


class Check(Protocol):
    """One check of the legacy application.

    ``probe`` evaluates the evidence once. It returns a failed result for every "not ready" outcome,
    including errors such as a refused connection or a missing file; it never raises for them. The
    prober bounds it with the check's timeout by cancelling it, so a probe must clean up (close
    sockets, kill child processes) when cancelled.

    A result with ``inconclusive=True`` means the check could not decide yet although it is
    working (a log check still reading a big backlog): the prober does not count it toward the
    thresholds, and the check's state stays what it was.

    ``wakeups`` is for event-driven checks: it yields whenever the evidence may have changed (an
    inotify event, a poll that saw a new size), so the prober probes at once instead of waiting for
    the period. Checks without a source of events return ``None``.

    Blocking work (file reads, stats, name lookups) runs on the check's own thread
    (:class:`~sidecar.checks._runner.Runner`), never in the event loop's shared default executor,
    so that one check whose calls hang delays no other check and never holds up the exit.
    """

    spec: CheckSpec

    async def probe(self) -> CheckResult: ...

    def wakeups(self) -> AsyncIterator[None] | None: ...

    def forget_before(self, started_at: float) -> None:
        """A new instance of the application started at ``started_at``: older evidence no longer
        counts.

        ``started_at`` is epoch seconds, from the Pod's ``containerStatuses[].state.running
        .startedAt``, which has whole-second precision: the instance started somewhere in
        ``[floor(started_at), floor(started_at) + 1)``. Evidence is dropped only when it is
        provably older than that, i.e. its time is before ``floor(started_at)``; so the new
        instance's first lines and files are never lost, while evidence the old instance produced
        within the second of the restart may survive (at most one second's worth). The time of
        evidence: for a log line, the latest time it can have been written (when the agent read
        it, or the file's modification time for lines that were already there when the agent
        opened the file); for a file, its modification time. The rule also applies to evidence
        read later. Checks without stored evidence (tcp, http, exec) do nothing. Synchronous and
        without I/O: the next probe reports the consequence.
        """
        ...

    async def aclose(self) -> None: ...


def not_before(started_at: float) -> float:
    """The earliest evidence time that counts for an instance started at ``started_at`` (the
    whole second it falls in: see :meth:`Check.forget_before`)."""
    return float(math.floor(started_at))


def timed_result(
    clock: Clock, started: float, ok: bool, detail: str, *, inconclusive: bool = False
) -> CheckResult:
    """The result of a probe that began at ``started`` (``clock.monotonic()``), ending now."""
    return CheckResult(
        ok=ok and not inconclusive,
        detail=bounded(detail, DETAIL_LIMIT),
        at=clock.time(),
        duration=max(clock.monotonic() - started, 0.0),
        inconclusive=inconclusive,
    )
