"""The ``log`` check: ready once a line matching ``pattern`` appears in the application's log.

State is the latest match in file order, READY (``pattern``) or FAIL (``fail_pattern``; it wins
when one line matches both), with the wall-clock time it was read and the line itself. A later
match replaces an earlier one, so "started" then "SEVERE" fails and "SEVERE" then "started"
succeeds. With ``max_age`` a READY match expires (heartbeat lines): the check fails once no ready
line has been read for more than ``max_age`` seconds.

Following the file (see :mod:`sidecar.checks._follow`): a rename-and-create rotation keeps the
state; a truncation, a ``copytruncate`` or a replaced file (deleted and recreated) means the
application restarted, and clears the state until the pattern appears again in the new content.

Reads happen in :meth:`LogCheck.probe`, in a worker thread (a hung network volume must not block
the event loop), with at most one read outstanding: a probe cancelled by its timeout leaves its
read running, and the next probe waits for that same read before starting another. The lines a
read returns are applied to the state by a task the probe only shields, so a cancelled probe
neither loses nor double-counts a line.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from sidecar.checks._follow import FollowBatch, LinePattern, LogFollower, describe_read_error
from sidecar.checks._inotify import FileWakeups
from sidecar.checks.base import timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, LogParams, LogStart, bounded

_SHOWN_LIMIT = 60
_LINE_LIMIT = 200


class MatchKind(StrEnum):
    READY = "ready"
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMatch:
    """The latest matching line: which pattern, when it was read (``clock.time()``), the line."""

    kind: MatchKind
    seen_at: float
    line: str


def show_pattern(pattern: str) -> str:
    return bounded(pattern, _SHOWN_LIMIT)


class LogCheck:
    """Follow ``params.path`` and report whether its latest matching line says "ready"."""

    def __init__(self, spec: CheckSpec, clock: Clock) -> None:
        if not isinstance(spec.params, LogParams):
            raise TypeError(f"{spec.label}: expected LogParams, got {type(spec.params).__name__}")
        self.spec = spec
        self._params = spec.params
        self._clock = clock
        self._follower = LogFollower(spec.params.path, from_end=spec.params.start is LogStart.END)
        self._ready = LinePattern(spec.params.pattern)
        self._fail = (
            None if spec.params.fail_pattern is None else LinePattern(spec.params.fail_pattern)
        )
        self._match: LogMatch | None = None
        self._missing = False
        self._error: str | None = None
        self._drain: asyncio.Task[None] | None = None
        self._wakeups = FileWakeups(spec.params.path, spec.timing.period)
        # Shared with the worker thread: who closes the follower (see _read_job and aclose).
        self._flags = threading.Lock()
        self._reading = False
        self._closed = False

    @property
    def match(self) -> LogMatch | None:
        """The latest match since the last reset, if any."""
        return self._match

    def wakeups(self) -> AsyncIterator[None]:
        return self._wakeups.new()

    def forget_before(self, started_at: float) -> None:
        """Drop the latest match if it was read before the second ``started_at`` falls in."""
        if self._match is not None and self._match.seen_at < int(started_at):
            self._match = None

    async def aclose(self) -> None:
        self._wakeups.close()
        with self._flags:
            self._closed = True
            reading = self._reading
        if not reading:  # otherwise the worker thread closes it when its read returns
            self._follower.close()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.cancel()
            await asyncio.wait([drain])

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        # At most one drain (and so one read in a worker thread) at a time: a drain left running by
        # a cancelled probe is awaited, then a fresh one reads what was written since.
        while self._drain is not None and not self._drain.done():
            await asyncio.shield(self._drain)
        if not self._closed:
            drain = asyncio.create_task(self._drain_all(), name=f"{self.spec.label} read")
            self._drain = drain
            await asyncio.shield(drain)
        ok, detail = self._evaluate()
        return timed_result(self._clock, started, ok, detail)

    # --- reading ---------------------------------------------------------------------------------

    async def _drain_all(self) -> None:
        while True:
            try:
                batch = await asyncio.to_thread(self._read_job)
            except OSError as exc:
                self._error = describe_read_error(self._params.path, exc)
                return
            if batch is None:  # closed
                return
            self._error = None
            self._apply(batch)
            if not batch.more:
                return
            await asyncio.sleep(0)

    def _read_job(self) -> FollowBatch | None:
        """In the worker thread. Whoever finishes last between this and aclose() closes the file."""
        with self._flags:
            if self._closed:
                return None
            self._reading = True
        try:
            return self._follower.read()
        finally:
            self._read_done()

    def _read_done(self) -> None:
        with self._flags:
            self._reading = False
            closed = self._closed
        if closed:
            self._follower.close()

    def _apply(self, batch: FollowBatch) -> None:
        """Fold one batch into the state (synchronously: a cancellation cannot split it)."""
        if batch.reset:
            self._match = None
        if batch.text:
            found = self._last_match(batch.text)
            if found is not None:
                self._match = found
        self._missing = batch.missing

    def _last_match(self, text: str) -> LogMatch | None:
        fail = None if self._fail is None else self._fail.last_line(text)
        # Only a ready line after the last fail line matters (on the same line, FAIL wins).
        ready = self._ready.last_line(text, 0 if fail is None else fail[1] + 1)
        if ready is not None:
            kind, (start, end) = MatchKind.READY, ready
        elif fail is not None:
            kind, (start, end) = MatchKind.FAIL, fail
        else:
            return None
        line = bounded(text[start:end], _LINE_LIMIT)
        return LogMatch(kind=kind, seen_at=self._clock.time(), line=line)

    # --- the verdict -----------------------------------------------------------------------------

    def _evaluate(self) -> tuple[bool, str]:
        params = self._params
        path = params.path
        if self._error is not None:
            return False, self._error
        if self._missing:
            return False, f"{path} does not exist yet"
        shown = show_pattern(params.pattern.pattern)
        match = self._match
        if match is None:
            return False, f'pattern "{shown}" not seen in {path}'
        if match.kind is MatchKind.FAIL:
            assert params.fail_pattern is not None
            return (
                False,
                f'fail pattern "{show_pattern(params.fail_pattern.pattern)}" seen in {path}',
            )
        if params.max_age is not None and self._clock.time() - match.seen_at > params.max_age:
            return False, f'pattern "{shown}" not seen in {path} for more than {params.max_age:g}s'
        return True, f'pattern "{shown}" seen in {path}'
