"""The ``log`` check: ready once a line matching ``pattern`` appears in the application's log.

State
    The latest match in log order, READY (``pattern``) or FAIL (``fail_pattern``; it wins when one
    line matches both), with the latest time the line can have been written and the line itself.
    A later match replaces an earlier one, so "started" then "SEVERE" fails and "SEVERE" then
    "started" succeeds. With ``max_age`` a READY match expires (heartbeat lines): the check fails
    once the latest ready line is more than ``max_age`` seconds old.

The age of a line
    Counted from the latest time it can have been written: when the agent read it or, for lines
    that were already in the file when the agent opened it, the file's modification time at that
    moment (whichever is earlier). So after an agent restart, a heartbeat the application wrote
    three hours ago is three hours old, not fresh. A container's output carries each line's own
    time (the container runtime's timestamp), which then counts.

Restarts of the application
    ``start_pattern``: a line the application writes when it (re)starts. Evidence before the
    latest start line is forgotten; a line that matches the start pattern and the ready (or fail)
    pattern counts as a ready (or fail) line: the start applies first, then the line's own
    verdict. :meth:`LogCheck.forget_before` (a new container instance) drops a match that is
    provably older than the instance, and tells the source (a container's output is then read
    from the new instance's start). A check whose match was forgotten says so: "not seen ...
    since the application started".

Rotation is not a restart
    A renamed, truncated (``copytruncate``), deleted-and-recreated or compressed-away file is
    followed (see :mod:`sidecar.checks._follow`): the new content is read from its start, and the
    latest match is kept, also while the file is missing in between.

Where lines come from
    A :class:`~sidecar.checks._lines.LineSource` (``_sources.open_source``: the file follower, or
    a container's output through the API). This module only matches lines (``_match.Scanner``)
    and keeps the state.

Reading
    A *drain* reads and matches everything new, batch by batch, in a task of its own that probes
    wait for; at most one drain runs at a time. A probe waits for it shielded, so a probe cancelled
    by its timeout neither loses nor double-counts a line, and the next probe first waits for that
    same drain. Batches of more than :data:`INLINE_LIMIT` characters are matched on the check's own
    thread, off the event loop. A probe still waiting after :data:`PATIENCE` of its timeout while
    the drain is making progress (a big log at start, a catch-up after a long gap) returns an
    *inconclusive* result ("reading ... 300 of 1024 MiB"): the check stays pending (or keeps the
    state it had, so a True gate stays True) instead of failing with "timed out". A drain that
    makes no progress at all (a hung volume) lets the probe time out, as any probe would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from sidecar.checks._container_lines import ContainerLogs
from sidecar.checks._lines import LineBatch
from sidecar.checks._match import Found, MatchKind, Scanner
from sidecar.checks._runner import Runner
from sidecar.checks._sources import SourceContext, open_source
from sidecar.checks.base import not_before, timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, LogParams, bounded

__all__ = ["PATIENCE", "LogCheck", "LogMatch", "MatchKind"]

_SHOWN_LIMIT = 60
#: The share of the timeout a probe waits for the reading before it says "still reading".
PATIENCE: Final = 0.8
#: Batches up to this many characters are matched in the event loop: a thread costs more.
INLINE_LIMIT: Final = 64 * 1024
_MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMatch:
    """The latest matching line: which pattern, the latest time it can have been written
    (``clock.time()`` seconds: when read, or earlier for old content), and the line."""

    kind: MatchKind
    seen_at: float
    line: str


def show_pattern(pattern: str) -> str:
    return bounded(pattern, _SHOWN_LIMIT)


class LogCheck:
    """Follow the application's log and report whether its latest matching line says "ready"."""

    def __init__(
        self,
        spec: CheckSpec,
        clock: Clock,
        *,
        container_logs: ContainerLogs | None = None,
        follow: bool = True,
    ) -> None:
        """``container_logs``: the API's log streams, for a check of a container's output;
        ``follow=False``: read the lines there are once (the ``check`` command)."""
        if not isinstance(spec.params, LogParams):
            raise TypeError(f"{spec.label}: expected LogParams, got {type(spec.params).__name__}")
        params = spec.params
        self.spec = spec
        self._params = params
        self._clock = clock
        self._runner = Runner(f"check-{spec.id}")
        context = SourceContext(
            label=spec.id,
            runner=self._runner,
            poll_interval=spec.timing.period,
            clock=clock,
            container_logs=container_logs,
            follow=follow,
        )
        self._source = open_source(params, context)
        self._scanner = Scanner(params.pattern, params.fail_pattern, params.start_pattern)
        self._match: LogMatch | None = None
        self._forgotten = False  # a start line or a new instance forgot the match
        self._missing: str | None = None
        self._error: str | None = None
        self._not_before: float | None = None
        self._drain: asyncio.Task[None] | None = None
        self._batches = 0  # batches applied so far: the drain's progress
        self._closed = False

    @property
    def match(self) -> LogMatch | None:
        """The latest match that still counts, if any."""
        return self._match

    def wakeups(self) -> AsyncIterator[None] | None:
        return self._source.wakeups()

    def forget_before(self, started_at: float) -> None:
        floor = not_before(started_at)
        if self._not_before is None or floor > self._not_before:
            self._not_before = floor
        if self._match is not None and self._match.seen_at < floor:
            self._match = None
            self._forgotten = True
        self._source.restarted(started_at)

    async def aclose(self) -> None:
        self._closed = True
        drain = self._drain
        if drain is not None and not drain.done():
            drain.cancel()
            await asyncio.wait([drain])
        await self._source.aclose()
        self._runner.close()

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        applied = self._batches
        try:
            async with asyncio.timeout_at(loop.time() + PATIENCE * self.spec.timing.timeout):
                await self._drain_fresh()
        except TimeoutError:
            if self._batches == applied:  # no progress at all: let the prober's timeout decide
                await self._drain_fresh()
            else:
                return timed_result(self._clock, started, False, self._reading(), inconclusive=True)
        ok, detail = self._evaluate()
        return timed_result(self._clock, started, ok, detail)

    # --- reading ---------------------------------------------------------------------------------

    async def _drain_fresh(self) -> None:
        """Wait for the drain in progress, if any, then for a new one (what was written since)."""
        while self._drain is not None and not self._drain.done():
            await asyncio.shield(self._drain)
        if not self._closed:
            self._drain = asyncio.create_task(self._drain_all(), name=f"{self.spec.label} read")
            await asyncio.shield(self._drain)

    async def _drain_all(self) -> None:
        while True:
            batch = await self._source.read()
            found = await self._scan(batch.text) if batch.text else None
            self._apply(batch, found)
            self._batches += 1
            if not batch.more or self._closed:
                return
            await asyncio.sleep(0)

    async def _scan(self, text: str) -> Found | None:
        if len(text) <= INLINE_LIMIT:
            return self._scanner.scan(text)
        return await self._runner.run(functools.partial(self._scanner.scan, text))

    def _apply(self, batch: LineBatch, found: Found | None) -> None:
        """Fold one batch into the state (synchronously: a cancellation cannot split it)."""
        if batch.error is not None:
            self._error = batch.error
            return
        self._error = None
        self._missing = batch.missing
        if found is None:
            return
        if found.restarted:
            self._match, self._forgotten = None, True
        if found.kind is None:
            return
        seen_at = self._clock.time()
        if batch.times is not None:  # the line's own time
            seen_at = min(seen_at, batch.times[batch.text.count("\n", 0, found.offset)])
        elif batch.written_before is not None:
            seen_at = min(seen_at, batch.written_before)
        if self._not_before is not None and seen_at < self._not_before:
            # older than the application's current instance, and so is everything before it
            self._match, self._forgotten = None, True
            return
        self._match = LogMatch(kind=found.kind, seen_at=seen_at, line=found.line)
        self._forgotten = False

    def _reading(self) -> str:
        where = self._source.where
        progress = self._source.progress()
        if progress is None or not progress.total:
            return f"still reading {where}"
        done, total = progress.done / _MiB, progress.total / _MiB
        return f"still reading {where}: {done:.0f} of {total:.0f} MiB"

    # --- the verdict -----------------------------------------------------------------------------

    def _evaluate(self) -> tuple[bool, str]:
        params = self._params
        where = self._source.where
        if self._error is not None:
            return False, self._error
        shown = show_pattern(params.pattern.pattern)
        match = self._match
        if match is None:
            if self._missing is not None:
                return False, self._missing
            since = " since the application started" if self._forgotten else ""
            return False, f'pattern "{shown}" not seen in {where}{since}'
        if match.kind is MatchKind.FAIL:
            assert params.fail_pattern is not None
            return (
                False,
                f'fail pattern "{show_pattern(params.fail_pattern.pattern)}" seen in {where}',
            )
        if params.max_age is not None and self._clock.time() - match.seen_at > params.max_age:
            return False, f'pattern "{shown}" not seen in {where} for more than {params.max_age:g}s'
        return True, f'pattern "{shown}" seen in {where}'
