"""The Pod observer: read, then watch our own Pod; reconnects, 410, bookmarks, the watchdog.

Real KubePodApi against the fake API server (which serves the watch as the watch cache does).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from structlog.typing import EventDict

from sidecar.apihealth import ApiHealth
from sidecar.metrics import Metrics
from sidecar.pod import WATCH_TIMEOUT
from sidecar.results import CheckState
from tests.unit.api_rig import NS, POD, UID, MakeAgent, events, eventually, routes
from tests.unit.fake_apiserver import FakeApiServer, Reply, Route

pytestmark = pytest.mark.usefixtures("_no_proxy", "logs")


def watched(metrics: Metrics, kind: str) -> float:
    found = metrics.registry.get_sample_value("readiness_gate_watch_events_total", {"type": kind})
    return found or 0.0


def bookmarks(metrics: Metrics) -> float:
    return watched(metrics, "BOOKMARK")


def watch_query(server: FakeApiServer, index: int = -1) -> dict[str, str]:
    request = server.of(Route.WATCH)[index]
    assert request.path == f"/api/v1/namespaces/{NS}/pods"
    return dict(request.query)


async def test_the_watch_is_of_our_pod_only_from_the_version_read_with_bookmarks(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    version = str(apiserver.resource_version)
    agent = make_agent(events=False)
    async with agent.running():
        await apiserver.wait_for(Route.WATCH)

    query = watch_query(apiserver)
    assert query["watch"].lower() == "true"
    assert query["fieldSelector"] == f"metadata.name={POD}"
    assert query["resourceVersion"] == version
    assert query["allowWatchBookmarks"].lower() == "true"
    assert WATCH_TIMEOUT[0] <= int(query["timeoutSeconds"]) <= WATCH_TIMEOUT[1]


async def test_a_watch_the_server_ends_is_reopened_from_the_last_version_without_a_read(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(events=False)
    async with agent.running():
        await agent.written(1)
        await eventually(lambda: apiserver.open_watches == 1)
        latest = str(apiserver.resource_version)  # our write, seen on the watch
        # A watch that ends before anything arrived counts as stuck: wait for our write on it.
        await eventually(lambda: watched(agent.metrics, "MODIFIED") >= 1)
        apiserver.end_watches()
        await apiserver.wait_for(Route.WATCH, count=2)
        await eventually(lambda: apiserver.open_watches == 1)
        bookmarked = str(apiserver.resource_version)
        apiserver.bookmark()
        await eventually(lambda: bookmarks(agent.metrics) == 1)
        apiserver.end_watches()
        await apiserver.wait_for(Route.WATCH, count=3)

    assert watch_query(apiserver, 1)["resourceVersion"] == latest
    assert watch_query(apiserver, 2)["resourceVersion"] == bookmarked
    assert len(apiserver.of(Route.GET)) == 1
    assert not [e for e in logs if e["event"].startswith("api_")]


async def test_410_gone_reads_the_pod_again_and_watches_from_there(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(events=False)
    async with agent.running():
        await agent.written(1)
        await eventually(lambda: apiserver.open_watches == 1)
        apiserver.compact()  # the watch cache no longer has our version
        apiserver.end_watches()
        await apiserver.wait_for(Route.WATCH, count=2)
        await apiserver.wait_for(Route.GET, count=2)
        await apiserver.wait_for(Route.WATCH, count=3)

    assert routes(apiserver)[-1] is Route.GET
    assert watch_query(apiserver, 2)["resourceVersion"] == str(apiserver.resource_version)
    assert not [e for e in logs if e["event"].startswith("api_")]  # 410 is normal


async def test_a_silent_watch_is_reopened_by_its_watchdog_and_said_once(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(events=False, inactivity=0.3)
    apiserver.watches_hang = True  # no event, no bookmark, no end: a stuck stream
    async with agent.running():
        await apiserver.wait_for(Route.WATCH, count=3, within=10)
        assert agent.status.health is ApiHealth.UNAVAILABLE
        apiserver.watches_hang = False
        apiserver.bookmark()
        await eventually(lambda: agent.status.health is ApiHealth.OK)

    watches = apiserver.of(Route.WATCH)
    assert watches[1].at - watches[0].at >= 0.3
    (stuck,) = events(logs, "api_unavailable")
    assert "no event or bookmark for 0.3s: the watch is stuck" in stuck["error"]
    assert len(events(logs, "api_recovered")) == 1


async def test_a_watch_that_fails_to_open_backs_off_and_keeps_the_version(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.WATCH, Reply(status=503), Reply(status=503), Reply(status=500))
    agent = make_agent(events=False, backoff_base=0.1, backoff_cap=0.4)
    async with agent.running():
        watches = await apiserver.wait_for(Route.WATCH, count=4, within=10)
        await eventually(lambda: agent.status.health is ApiHealth.OK)

    assert [w.status for w in watches] == [503, 503, 500, 200]
    assert all(b.at - a.at >= 0.05 - 0.01 for a, b in itertools.pairwise(watches))
    assert len(apiserver.of(Route.GET)) == 1
    assert len(events(logs, "api_unavailable")) == 1
    assert len(events(logs, "api_recovered")) == 1


async def test_a_forbidden_watch_names_the_list_and_watch_rule(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.WATCH, Reply(status=403, message='cannot watch resource "pods"'))
    agent = make_agent(events=False)
    async with agent.running():
        await apiserver.wait_for(Route.WATCH, count=2, within=10)

    (error,) = events(logs, "api_forbidden")
    assert 'resources: ["pods"], verbs: ["list", "watch"]' in error["error"]


async def test_an_error_event_on_the_watch_backs_off_and_watches_again(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(events=False)
    async with agent.running():
        await eventually(lambda: apiserver.open_watches == 1)
        apiserver.send_error(500, "etcdserver: leader changed")
        await apiserver.wait_for(Route.WATCH, count=2)

    (warning,) = events(logs, "api_unavailable")
    assert "etcdserver: leader changed" in warning["error"]


async def test_container_statuses_reach_the_consumers_on_every_change(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    seen: list[dict[str, Any]] = []
    agent = make_agent(events=False)
    agent.observer.consumers.append(lambda pod, listed: seen.append(pod))
    async with agent.running():
        await eventually(lambda: apiserver.open_watches == 1)
        apiserver.set_container(
            "app",
            {"running": {"startedAt": "2026-12-01T10:00:00Z"}},
            container_id="containerd://two",
            restarts=1,
        )
        await eventually(lambda: any(_container_id(p) == "containerd://two" for p in seen))


def _container_id(pod: dict[str, Any]) -> str | None:
    statuses = pod["status"].get("containerStatuses") or [{}]
    found = statuses[0].get("containerID")
    return str(found) if found else None


async def test_a_conflict_rereads_the_pod_before_the_next_write(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.PATCH, Reply(status=409, message="the object has been modified"))
    agent = make_agent(events=False, backoff_base=0.05)
    async with agent.running():
        await agent.written(1)

    assert routes(apiserver) == [Route.GET, Route.PATCH, Route.GET, Route.PATCH]
    (rejected,) = events(logs, "api_rejected")
    assert "re-reading the Pod" in rejected["error"]


async def test_without_pod_uid_the_uid_read_first_names_the_pod_in_events(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(uid=None)
    async with agent.running():
        await agent.written(1)
        agent.report(CheckState.READY)
        await eventually(lambda: bool(apiserver.events))

    assert apiserver.events[0]["involvedObject"]["uid"] == UID
    await asyncio.sleep(0)
