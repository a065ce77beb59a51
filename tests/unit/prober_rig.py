"""A prober worker for one ``FakeCheck`` on a ``FakeClock``: what the prober tests drive."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from sidecar.containers import Following
from sidecar.metrics import Metrics
from sidecar.model import GateMode, Timing
from sidecar.prober import Worker
from sidecar.results import CheckState, CheckStatus, Results
from tests.unit.fakes import FakeCheck, FakeClock, Step, make_spec, settle

SEED = 5
PERIOD = 8.0  # with SEED, the jitter before the second probe is about 5 s: well inside the period
START = 1000.0


def jitter(seed: int = SEED, period: float = PERIOD) -> float:
    """The pause before the second probe that a worker with ``random.Random(seed)`` draws."""
    return random.Random(seed).uniform(0, period)


class Rig:
    """A worker for one ``FakeCheck`` on a ``FakeClock``, with its results and metrics."""

    def __init__(
        self,
        script: list[Step] | None = None,
        *,
        timing: Timing | None = None,
        events: bool = False,
        event_driven: bool = True,
        seed: int = SEED,
        following: Following | None = None,
    ) -> None:
        self.clock = FakeClock(start=START)
        timing = timing or Timing(period=PERIOD)
        spec = make_spec("APP", timing=timing)
        self.check = FakeCheck(spec, self.clock, script or [(True, "fine")], events=events)
        self.results = Results([spec], GateMode.ALL)
        self.metrics = Metrics()
        self.worker = Worker(
            self.check,
            self.results,
            clock=self.clock,
            rng=random.Random(seed),
            metrics=self.metrics,
            event_driven=event_driven,
            following=following,
        )

    @property
    def probes(self) -> int:
        return len(self.check.probed_at)

    def state(self) -> CheckState:
        return self.results.checks["APP"].state

    @property
    def status(self) -> CheckStatus:
        return self.results.checks["APP"]

    @property
    def detail(self) -> str | None:
        last = self.results.checks["APP"].last
        return None if last is None else last.detail

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            name, {"check": "APP", "kind": "file", **labels}
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        task = asyncio.create_task(self.worker.run(), name="worker-under-test")
        await settle()
        try:
            yield task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def first_result(rig: Rig) -> None:
    """Wait (in real time: a probe timeout is real time) for the worker's first result."""
    async with asyncio.timeout(5):
        while rig.results.checks["APP"].last is None:
            await rig.results.wait_changed(rig.results.version)
    await settle()
