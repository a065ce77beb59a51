"""Test doubles for timing logic: a clock that moves only when told, and a scripted check."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from sidecar.clock import Clock
from sidecar.model import CheckKind, CheckResult, CheckSpec, FileParams, Timing

#: How many times ``settle`` yields to the event loop: enough for a chain of tasks to react.
SETTLE_ROUNDS: Final = 50


async def settle(rounds: int = SETTLE_ROUNDS) -> None:
    """Let every task that can run do so, until it waits on something again."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """A ``Clock`` whose time moves only in ``advance``; ``sleep`` waits for that."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), waiter))
        await waiter  # a cancelled sleep cancels the waiter; advance skips it

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for the clock."""
        return sum(1 for *_, waiter in self._sleepers if not waiter.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking the sleepers that are due in deadline order.

        The loop runs after each wake-up, so sleeps that begin meanwhile and fall due before the
        end of the step wake too, at their own deadlines.
        """
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, waiter = heapq.heappop(self._sleepers)
            if waiter.done():
                continue
            self._now = max(self._now, deadline)
            waiter.set_result(None)
            await settle()
        self._now = target
        await settle()


Hang = Literal["hang"]
#: A script step: the probe never returns (until it is cancelled).
HANG: Final[Hang] = "hang"


@dataclass(frozen=True, slots=True)
class Slow:
    """A script step: the probe takes ``seconds`` on the check's clock, then returns ``outcome``."""

    seconds: float
    outcome: tuple[bool, str]


#: ``(ok, detail)`` to return, an exception to raise, ``Slow(...)`` or ``HANG``.
Step = tuple[bool, str] | Exception | Slow | Hang

_END: Final = object()


class _Channel:
    """The wake-ups of a ``FakeCheck``: yield on ``trigger``, raise on ``fail_wakeups``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> None:
        item = await self.queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item


class FakeCheck:
    """A ``Check`` that plays ``script`` one step per probe and then repeats the last step."""

    def __init__(
        self,
        spec: CheckSpec,
        clock: Clock,
        script: Iterable[Step] = ((True, "fine"),),
        *,
        events: bool = False,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._script: deque[Step] = deque(script)
        if not self._script:
            raise ValueError("a script needs at least one step")
        self._step = self._script[0]
        self._channel = _Channel() if events else None
        self.probed_at: list[float] = []  # clock.monotonic() at the start of each probe
        self.cancelled = 0  # hung probes that were cancelled
        self.forgotten: list[float] = []  # forget_before() calls
        self.closed = False

    def script(self, *steps: Step) -> None:
        """Replace what the next probes do."""
        self._script = deque(steps)

    def trigger(self) -> None:
        """Make ``wakeups()`` yield once."""
        assert self._channel is not None, "FakeCheck(events=True) has wake-ups"
        self._channel.queue.put_nowait(None)

    def fail_wakeups(self, error: Exception) -> None:
        """Make ``wakeups()`` raise ``error``."""
        assert self._channel is not None, "FakeCheck(events=True) has wake-ups"
        self._channel.queue.put_nowait(error)

    def end_wakeups(self) -> None:
        """Make ``wakeups()`` stop."""
        assert self._channel is not None, "FakeCheck(events=True) has wake-ups"
        self._channel.queue.put_nowait(_END)

    async def probe(self) -> CheckResult:
        self.probed_at.append(self._clock.monotonic())
        if self._script:
            self._step = self._script.popleft()
        step = self._step
        if isinstance(step, str):
            try:
                while True:
                    await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(step, Exception):
            raise step
        if isinstance(step, Slow):
            await self._clock.sleep(step.seconds)
            step = step.outcome
        ok, detail = step
        return CheckResult(ok=ok, detail=detail, at=self._clock.time())

    def wakeups(self) -> _Channel | None:
        return self._channel

    async def aclose(self) -> None:
        self.closed = True

    def forget_before(self, started_at: float) -> None:
        self.forgotten.append(started_at)


def make_spec(
    check_id: str = "APP", *, timing: Timing | None = None, gate: str | None = None
) -> CheckSpec:
    """A spec for a ``FakeCheck`` (the params are never read)."""
    return CheckSpec(
        id=check_id,
        kind=CheckKind.FILE,
        gate=gate,
        timing=timing or Timing(),
        params=FileParams(path=Path("/nonexistent") / check_id),
    )
