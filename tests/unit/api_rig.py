"""The API side of the agent (transport, observer, writer, events) against the fake API server.

``make_agent`` (a fixture in tests/unit/conftest.py) builds one from the real parts with small
timeouts and backoffs; the helpers here wait for and look at what the fake server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from structlog.typing import EventDict

from sidecar.api import KubePodApi
from sidecar.apihealth import ApiStatus
from sidecar.events import EventRecorder
from sidecar.gate import GateWriter
from sidecar.metrics import Metrics
from sidecar.model import CheckResult
from sidecar.pod import PodObserver
from sidecar.results import CheckState, Results
from tests.unit.fake_apiserver import FakeApiServer, Recorded, Route

NS = "shop"
POD = "web-0"
UID = "0c7a5c1e-7d47-4c3b-9d6e-1f3f0e0b7a11"
GATE = "example.com/tomcat-ready"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.first-token-0000"
NEW_TOKEN = "eyJhbGciOiJSUzI1NiJ9.second-token-111"  # same length: a rotation changes no size
KUBELET_CONDITIONS = [
    {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady"},
    {"type": "ContainersReady", "status": "True"},
    {"type": "PodScheduled", "status": "True"},
]
QUIET = 0.3  # long enough for a write the writer was about to make to arrive
SETTLE = 5.0  # how long to wait for what must happen (generous: the machine is shared)
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.2


@dataclass
class Agent:
    """One writer and observer, their API client and the results that drive them."""

    server: FakeApiServer
    results: Results
    api: KubePodApi
    status: ApiStatus
    observer: PodObserver
    writer: GateWriter
    events: EventRecorder | None
    metrics: Metrics
    check_ids: list[str]

    def report(self, state: CheckState, detail: str = "", *, check: str | None = None) -> None:
        """A probe outcome after thresholds: READY, NOT_READY or (still) PENDING."""
        ok = state is CheckState.READY
        detail = detail or ("HTTP 200" if ok else "connection refused")
        result = CheckResult(ok=ok, detail=detail, at=time.time())
        self.results.update(check or self.check_ids[0], result, state)

    async def written(self, count: int) -> list[Recorded]:
        """Wait until ``count`` status patches succeeded and the writer has taken the answers in."""
        await eventually(
            lambda: (
                len(self.server.served(Route.PATCH)) >= count and self.writer.status.writes >= count
            )
        )
        return self.server.served(Route.PATCH)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        """Run the observer and the writer (and the event recorder); yields the writer's task."""
        task = asyncio.create_task(self.writer.run(), name="gate-writer")
        others = [asyncio.create_task(self.observer.run(), name="pod-observer")]
        if self.events is not None:
            others.append(asyncio.create_task(self.events.run(), name="events"))
        try:
            yield task
        finally:
            for running in (task, *others):
                running.cancel()
            await asyncio.gather(task, *others, return_exceptions=True)


MakeAgent = Callable[..., Agent]


async def eventually(predicate: Callable[[], bool], within: float = SETTLE) -> None:
    """Poll ``predicate`` (state of the writer or the fake server) until it holds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling objects that offer no event
            await asyncio.sleep(0.01)


def only_condition(request: Recorded) -> dict[str, Any]:
    (condition,) = request.conditions
    assert isinstance(condition, dict)
    return condition


def on_server(server: FakeApiServer, condition_type: str) -> dict[str, Any]:
    condition = server.condition(condition_type)
    assert condition is not None, f"no {condition_type} condition on the server"
    return condition


def gaps(requests: list[Recorded]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def sent(server: FakeApiServer) -> list[Recorded]:
    """Every request but the watches (which the observer keeps open all the time)."""
    return [r for r in server.requests if r.route is not Route.WATCH]


def routes(server: FakeApiServer) -> list[Route]:
    return [r.route for r in sent(server)]


def events(logs: list[EventDict], name: str) -> list[EventDict]:
    return [entry for entry in logs if entry["event"] == name]
