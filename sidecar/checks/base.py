"""The contract every check kind fulfils."""

from __future__ import annotations

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

    ``wakeups`` is for event-driven checks: it yields whenever the evidence may have changed (an
    inotify event, a poll that saw a new size), so the prober probes at once instead of waiting for
    the period. Checks without a source of events return ``None``.
    """

    spec: CheckSpec

    async def probe(self) -> CheckResult: ...

    def wakeups(self) -> AsyncIterator[None] | None: ...

    async def aclose(self) -> None: ...

    def forget_before(self, started_at: float) -> None:
        """A new instance of the followed application started at ``started_at`` (epoch seconds,
        whole seconds as the Pod's ``state.running.startedAt`` has them): evidence older than it
        no longer counts. Evidence from that second onwards still does, so the new instance's
        first lines are never lost. Checks that probe the live application forget nothing."""
        ...


def timed_result(clock: Clock, started: float, ok: bool, detail: str) -> CheckResult:
    """The result of a probe that began at ``started`` (``clock.monotonic()``), ending now."""
    return CheckResult(
        ok=ok,
        detail=bounded(detail, DETAIL_LIMIT),
        at=clock.time(),
        duration=max(clock.monotonic() - started, 0.0),
    )
