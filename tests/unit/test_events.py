"""Events: asynchronous, bounded, aggregated; they never delay a status write (issue 13, item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.clock import SystemClock
from sidecar.config import Identity
from sidecar.events import EventRecorder
from sidecar.metrics import Metrics
from sidecar.results import CheckState
from tests.unit.api_rig import NS, POD, UID, Agent, MakeAgent, eventually, only_condition
from tests.unit.fake_apiserver import HANG, FakeApiServer, Reply, Route

pytestmark = pytest.mark.usefixtures("_no_proxy", "logs")


def dropped(metrics: Metrics, reason: str) -> float:
    name = "readiness_gate_events_dropped_total"
    return metrics.registry.get_sample_value(name, {"reason": reason}) or 0.0


@contextlib.asynccontextmanager
async def recording(recorder: EventRecorder) -> AsyncIterator[EventRecorder]:
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def recorder_for(agent: Agent, **kwargs: int | float) -> EventRecorder:
    return EventRecorder(
        agent.api,
        identity=Identity(pod_name=POD, namespace=NS, pod_uid=UID),
        uid=lambda: UID,
        clock=SystemClock(),
        metrics=agent.metrics,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_hanging_events_endpoint_never_delays_a_status_write(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    apiserver.fail(HANG, Route.EVENT)
    agent = make_agent(request_timeout=5.0)
    async with agent.running():
        await agent.written(1)
        delays = []
        for count, state in enumerate([CheckState.READY, CheckState.NOT_READY] * 2, start=2):
            reported = time.monotonic()
            agent.report(state)
            await agent.written(count)
            delays.append(time.monotonic() - reported)

    statuses = [only_condition(p)["status"] for p in apiserver.of(Route.PATCH)]
    assert statuses == ["False", "True", "False", "True", "False"]
    assert max(delays) < 1.0, delays  # today's main waited for each hung Event POST (~5 s each)
    assert len(apiserver.of(Route.EVENT)) == 1  # one hangs; the rest wait in the queue


async def test_events_beyond_the_queue_are_dropped_and_counted(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    apiserver.fail(HANG, Route.EVENT)
    agent = make_agent(events=False)
    recorder = recorder_for(agent, queue_size=2)
    async with recording(recorder):
        for index in range(6):
            recorder.record(type_="Normal", reason="ReadinessGateTrue", message=f"flip {index}")
        await apiserver.wait_for(Route.EVENT)

    # All six came at once (nothing is sent before the recorder runs): two queued, four dropped.
    assert dropped(agent.metrics, "queue_full") == 4


async def test_a_repeated_event_raises_the_count_of_the_first_instead_of_a_new_object(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(events=False)
    recorder = recorder_for(agent)
    async with recording(recorder):
        for _ in range(3):  # a flapping gate: True, False, True, False, True, False
            recorder.record(type_="Normal", reason="ReadinessGateTrue", message="gate is True")
            recorder.record(type_="Warning", reason="ReadinessGateFalse", message="gate is False")
        await apiserver.wait_for(Route.EVENT_PATCH, count=4)
        await eventually(lambda: all(r.status for r in apiserver.of(Route.EVENT_PATCH)))

    assert len(apiserver.events) == 2  # two Event objects, not six
    counts = {e["reason"]: e["count"] for e in apiserver.events}
    assert counts == {"ReadinessGateTrue": 3, "ReadinessGateFalse": 3}
    assert all("lastTimestamp" in r.body for r in apiserver.of(Route.EVENT_PATCH))


async def test_an_expired_event_is_created_again(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(events=False)
    recorder = recorder_for(agent)
    async with recording(recorder):
        recorder.record(type_="Normal", reason="ReadinessGateTrue", message="gate is True")
        await apiserver.wait_for(Route.EVENT)
        apiserver.script(Route.EVENT_PATCH, Reply(status=404))  # the Event's 1 h TTL passed
        recorder.record(type_="Normal", reason="ReadinessGateTrue", message="gate is True")
        await apiserver.wait_for(Route.EVENT, count=2)

    assert len(apiserver.events) == 2


async def test_a_flood_of_events_is_rate_limited_like_client_gos_spam_filter(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(events=False)
    recorder = recorder_for(agent, burst=3, refill=3600.0)
    async with recording(recorder):
        for index in range(5):
            recorder.record(type_="Normal", reason="ReadinessGateTrue", message=f"flip {index}")
        await eventually(lambda: dropped(agent.metrics, "rate_limited") == 2)

    assert len(apiserver.of(Route.EVENT)) == 3
