"""The gate writer and the Pod observer, with the real KubePodApi (kubernetes_asyncio), against a
fake API server that also serves the watch.

Real sockets, a real token file, a real clock; small backoff and request timeouts through the
constructors so that each test takes well under two seconds.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import random
import statistics
import time
from pathlib import Path

import pytest
from structlog.typing import EventDict

from sidecar.api import (
    STRATEGIC_MERGE,
    USER_AGENT,
    build_configuration,
)
from sidecar.apihealth import ApiHealth
from sidecar.backoff import Backoff
from sidecar.conditions import timestamp
from sidecar.config import ApiAccess
from sidecar.results import CheckState
from tests.unit.api_rig import (
    GATE,
    KUBELET_CONDITIONS,
    NEW_TOKEN,
    NS,
    POD,
    QUIET,
    SETTLE,
    TOKEN,
    UID,
    MakeAgent,
    events,
    eventually,
    gaps,
    on_server,
    only_condition,
    routes,
    sent,
)
from tests.unit.fake_apiserver import DROP, HANG, FakeApiServer, Reply, Route

# --- start-up ----------------------------------------------------------------------------------

#: Every test: no proxy from the environment, logs captured (and never holding a token).
pytestmark = pytest.mark.usefixtures("_no_proxy", "logs")


async def test_startup_reads_the_pod_then_writes_false_checks_pending_exactly_once(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent()
    async with agent.running():
        (patch,) = await agent.written(1)
        await asyncio.sleep(QUIET)

    get, again = sent(apiserver)[0], sent(apiserver)[1]
    assert (get.method, get.path) == ("GET", f"/api/v1/namespaces/{NS}/pods/{POD}")
    assert again is patch
    assert (patch.method, patch.path) == ("PATCH", f"/api/v1/namespaces/{NS}/pods/{POD}/status")
    assert len(sent(apiserver)) == 2
    for request in (get, patch):
        assert request.authorization == f"Bearer {TOKEN}"
        assert request.headers["User-Agent"] == USER_AGENT
    assert patch.headers["Content-Type"] == STRATEGIC_MERGE
    condition = only_condition(patch)
    assert patch.body == {"metadata": {"uid": UID}, "status": {"conditions": [condition]}}
    assert condition["type"] == GATE
    assert condition["status"] == "False"
    assert condition["reason"] == "ChecksPending"
    assert "file APP" in condition["message"]
    assert abs(_epoch(condition["lastTransitionTime"]) - time.time()) < 10
    assert apiserver.condition(GATE) == condition
    assert agent.writer.status.synced
    assert agent.status.health is ApiHealth.OK


def _epoch(stamp: str) -> float:
    assert stamp == timestamp(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


async def test_a_restarted_agent_keeps_a_true_condition_while_its_checks_are_pending(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    true = {
        "type": GATE,
        "status": "True",
        "reason": "ChecksPassed",
        "message": "file APP: present",
        "lastTransitionTime": "2024-05-01T10:00:00Z",
    }
    apiserver.set_condition(true)
    agent = make_agent()
    async with agent.running():
        await apiserver.wait_for(Route.GET)
        await eventually(lambda: agent.writer.status.synced)
        agent.report(CheckState.PENDING, "no result yet")
        await asyncio.sleep(QUIET)

    assert routes(apiserver) == [Route.GET]
    assert apiserver.condition(GATE) == true


async def test_an_undeclared_gate_is_never_written_and_logged_once_with_the_snippet(
    make_agent: MakeAgent,
    apiserver: FakeApiServer,
    logs: list[EventDict],
) -> None:
    assert apiserver.pod is not None
    apiserver.pod["spec"]["readinessGates"] = [{"conditionType": "example.com/other"}]
    agent = make_agent(resync=0.1)
    async with agent.running():
        await apiserver.wait_for(Route.GET, count=3)  # re-reads do not repeat the error
        agent.report(CheckState.READY)
        await asyncio.sleep(QUIET)

    assert not apiserver.of(Route.PATCH)
    assert not apiserver.of(Route.EVENT)
    (error,) = events(logs, "gate_not_declared")
    assert error["log_level"] == "error"
    assert error["condition_type"] == GATE
    assert error["pod_declares"] == ["example.com/other"]
    assert f"readinessGates:\n  - conditionType: {GATE}" in error["fix"]
    assert agent.writer.status.gates[None].declared is False


async def test_without_a_condition_type_the_pods_single_readiness_gate_is_written(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(condition_type=None)
    async with agent.running():
        (patch,) = await agent.written(1)

    assert only_condition(patch)["type"] == GATE
    assert agent.writer.status.gates[None].condition_type == GATE


async def test_without_a_condition_type_several_declared_gates_are_an_error_logged_once(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    assert apiserver.pod is not None
    apiserver.pod["spec"]["readinessGates"] = [
        {"conditionType": GATE},
        {"conditionType": "example.com/other"},
    ]
    agent = make_agent(condition_type=None, resync=0.1)
    async with agent.running():
        await apiserver.wait_for(Route.GET, count=3)
        agent.report(CheckState.READY)
        await asyncio.sleep(QUIET)

    assert not apiserver.of(Route.PATCH)
    (error,) = events(logs, "gate_condition_type_unknown")
    assert error["log_level"] == "error"
    assert error["readiness_gates"] == [GATE, "example.com/other"]
    assert "GATE_CONDITION_TYPE" in error["fix"]


async def test_several_gates_are_written_in_one_patch_each_by_its_own_checks(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    other = "example.com/db-ready"
    assert apiserver.pod is not None
    apiserver.pod["spec"]["readinessGates"].append({"conditionType": other})
    agent = make_agent(condition_type=None, gates=(GATE, other))
    async with agent.running():
        (first,) = await agent.written(1)
        assert {c["type"] for c in first.conditions} == {GATE, other}
        agent.report(CheckState.READY, check=agent.check_ids[1])
        second = (await agent.written(2))[1]

    assert [(c["type"], c["status"]) for c in second.conditions] == [(other, "True")]
    assert on_server(apiserver, GATE)["status"] == "False"


# --- transitions -------------------------------------------------------------------------------


async def test_each_transition_is_one_patch_with_only_our_condition_and_the_uid(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent()
    async with agent.running():
        await agent.written(1)
        agent.report(CheckState.READY)
        await agent.written(2)
        agent.report(CheckState.NOT_READY)
        await agent.written(3)
        await asyncio.sleep(QUIET)

    patches = apiserver.of(Route.PATCH)
    assert [only_condition(p)["status"] for p in patches] == ["False", "True", "False"]
    assert [only_condition(p)["reason"] for p in patches] == [
        "ChecksPending",
        "ChecksPassed",
        "CheckFailed",
    ]
    for patch in patches:
        assert set(patch.body) == {"metadata", "status"}
        assert patch.body["metadata"] == {"uid": UID}
        assert set(patch.body["status"]) == {"conditions"}
        assert only_condition(patch)["type"] == GATE
    # The kubelet's conditions are untouched: merged by type, never sent.
    for kubelet in KUBELET_CONDITIONS:
        assert apiserver.condition(kubelet["type"]) == kubelet
    assert agent.writer.status.writes == 3
    assert agent.writer.status.gates[None].transitions == 3


async def test_results_that_change_nothing_on_the_server_write_nothing(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    failed = {
        "type": GATE,
        "status": "False",
        "reason": "CheckFailed",
        "message": "file APP: connection refused",
        "lastTransitionTime": "2024-05-01T10:00:00Z",
    }
    apiserver.set_condition(failed)
    agent = make_agent()
    agent.report(CheckState.NOT_READY, "connection refused")
    async with agent.running():
        await eventually(lambda: agent.writer.status.synced)
        for _ in range(5):
            agent.report(CheckState.NOT_READY, "connection refused")  # same evidence
            await asyncio.sleep(0.02)
        agent.report(CheckState.PENDING, "starting")  # pending never overrides the server
        await asyncio.sleep(QUIET)

    assert routes(apiserver) == [Route.GET]
    assert apiserver.condition(GATE) == failed


async def test_last_transition_time_changes_only_when_the_status_flips(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    since = "2024-05-01T10:00:00Z"
    apiserver.set_condition(
        {
            "type": GATE,
            "status": "True",
            "reason": "ChecksPassed",
            "message": "file APP: HTTP 200",
            "lastTransitionTime": since,
        }
    )
    agent = make_agent()
    agent.report(CheckState.READY, "HTTP 204")  # still True, another message
    async with agent.running():
        await agent.written(1)
        agent.report(CheckState.NOT_READY, "HTTP 503")
        await agent.written(2)
        agent.report(CheckState.NOT_READY, "HTTP 502")
        await agent.written(3)

    same, flipped, again = (only_condition(p) for p in apiserver.of(Route.PATCH))
    assert (same["status"], same["message"], same["lastTransitionTime"]) == (
        "True",
        "file APP: HTTP 204",
        since,
    )
    assert flipped["status"] == "False"
    assert abs(_epoch(flipped["lastTransitionTime"]) - time.time()) < 10
    assert again["message"] == "file APP: HTTP 502"
    assert again["lastTransitionTime"] == flipped["lastTransitionTime"]
    assert on_server(apiserver, GATE)["lastTransitionTime"] == flipped["lastTransitionTime"]


async def test_transitions_post_events_but_the_pending_write_does_not(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent()
    async with agent.running():
        await agent.written(1)
        agent.report(CheckState.READY)
        await apiserver.wait_for(Route.EVENT, count=1)
        agent.report(CheckState.NOT_READY)
        await apiserver.wait_for(Route.EVENT, count=2)
        await eventually(lambda: len(apiserver.events) == 2)

    ready, failed = apiserver.events
    assert apiserver.of(Route.EVENT)[0].path == f"/api/v1/namespaces/{NS}/events"
    assert (ready["type"], ready["reason"]) == ("Normal", "ReadinessGateTrue")
    assert (failed["type"], failed["reason"]) == ("Warning", "ReadinessGateFalse")
    assert ready["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": POD,
        "namespace": NS,
        "uid": UID,
    }
    assert ready["message"].startswith(f"{GATE} is True: file APP: HTTP 200")
    assert failed["metadata"]["generateName"] == f"{POD}."


async def test_forbidden_events_are_logged_once_and_the_gate_is_still_written(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.fail(
        Reply(status=403, message='events is forbidden: User "x" cannot create resource'),
        Route.EVENT,
    )
    agent = make_agent()
    async with agent.running():
        await agent.written(1)
        for count, state in enumerate(
            (CheckState.READY, CheckState.NOT_READY, CheckState.READY), start=2
        ):
            agent.report(state)
            await agent.written(count)
        await apiserver.wait_for(Route.EVENT, count=3)

    assert [only_condition(p)["status"] for p in apiserver.of(Route.PATCH)][-1] == "True"
    (warning,) = events(logs, "event_not_created")
    assert warning["status"] == 403
    assert "GATE_EVENTS=false" in warning["fix"]
    assert agent.status.health is ApiHealth.OK
    assert not [e for e in logs if e["event"].startswith("api_")]


# --- steady state ------------------------------------------------------------------------------


async def test_no_requests_at_all_while_the_results_do_not_change(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(resync=60.0)
    agent.report(CheckState.READY)
    async with agent.running():
        await agent.written(1)
        await apiserver.wait_for(Route.EVENT)
        before = len(apiserver.requests)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # probes keep reporting the same evidence
            agent.report(CheckState.READY)
            await asyncio.sleep(0.05)
        assert apiserver.open_watches == 1

    assert len(apiserver.requests) == before
    assert routes(apiserver) == [Route.GET, Route.PATCH, Route.EVENT]
    assert len(apiserver.of(Route.WATCH)) == 1  # one watch, open all along


async def test_the_watch_repairs_a_condition_changed_behind_its_back_at_once(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(resync=0.0)
    agent.report(CheckState.READY)
    async with agent.running():
        await agent.written(1)
        apiserver.set_condition({"type": GATE, "status": "False", "reason": "SomebodyElse"})
        flipped = asyncio.get_running_loop().time()
        repair = (await agent.written(2))[1]
        repaired = on_server(apiserver, GATE)
        await asyncio.sleep(QUIET)

    assert repair.at - flipped < 0.5  # the watch showed it: no re-read, no resync
    # Events are posted beside the writes, never before them: compare each stream on its own.
    # The same event again: its count goes up, no second Event object.
    seen = routes(apiserver)
    assert [r for r in seen if r in (Route.GET, Route.PATCH)] == [
        Route.GET,
        Route.PATCH,
        Route.PATCH,
    ]
    assert [r for r in seen if r in (Route.EVENT, Route.EVENT_PATCH)] == [
        Route.EVENT, Route.EVENT_PATCH
    ]  # fmt: skip
    assert (repaired["status"], repaired["reason"]) == ("True", "ChecksPassed")
    # The repair flips the status back, so it carries a new transition time.
    assert abs(_epoch(repaired["lastTransitionTime"]) - time.time()) < 10
    assert agent.writer.status.gates[None].repairs == 1
    (entry,) = events(logs, "gate_repaired")
    assert entry["found"]["reason"] == "SomebodyElse"


async def test_a_watch_event_older_than_our_own_write_causes_no_rewrite(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(events=False)
    async with agent.running():
        await agent.written(1)
        apiserver.watches_hang = True  # the watch falls behind our writes
        agent.report(CheckState.READY)
        await agent.written(2)
        agent.report(CheckState.NOT_READY)
        await agent.written(3)
        apiserver.watches_hang = False
        apiserver.bookmark()  # the backlog arrives: each event shows a state we have left
        await eventually(lambda: apiserver.open_watches == 1)
        await asyncio.sleep(QUIET)

    assert [only_condition(p)["status"] for p in apiserver.of(Route.PATCH)] == [
        "False",
        "True",
        "False",
    ]
    assert agent.writer.status.gates[None].repairs == 0


async def test_resync_rereads_the_pod_and_repairs_what_a_silent_watch_did_not_show(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(resync=0.25, events=False)
    agent.report(CheckState.READY)
    async with agent.running():
        await agent.written(1)
        apiserver.watches_hang = True  # a stream that says nothing any more
        apiserver.set_condition({"type": GATE, "status": "False", "reason": "SomebodyElse"})
        repair = (await agent.written(2))[1]
        repaired = on_server(apiserver, GATE)
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(0.8)
        reads = [r for r in apiserver.of(Route.GET) if r.at >= started]

    before_repair = sent(apiserver)[sent(apiserver).index(repair) - 1]
    assert before_repair.route is Route.GET  # the re-read found it, the patch repaired it
    assert (repaired["status"], repaired["reason"]) == ("True", "ChecksPassed")
    assert 1 <= len(reads) <= 5  # about one read per 0.25 s, no more
    assert len(apiserver.of(Route.PATCH)) == 2  # nothing else needed repairing


# --- failures: backoff -------------------------------------------------------------------------


def test_backoff_delays_use_equal_jitter_and_stay_under_the_cap() -> None:
    backoff = Backoff(random.Random(1), base=0.5, cap=16.0)
    delays = [backoff.next_delay() for _ in range(40)]
    for attempt, delay in enumerate(delays):
        ceiling = min(16.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays[10:])) == 30  # jittered, not in lockstep with other Pods
    assert backoff.next_delay(retry_after=30.0) == 30.0
    assert backoff.next_delay(retry_after=3600.0) == 60.0  # a silly Retry-After is capped
    backoff.reset()
    assert backoff.next_delay() <= 0.5


@pytest.mark.parametrize("code", [500, 503])
async def test_server_errors_are_retried_with_capped_exponential_backoff_not_a_storm(
    make_agent: MakeAgent, apiserver: FakeApiServer, code: int
) -> None:
    apiserver.fail(Reply(status=code), Route.PATCH)
    agent = make_agent(backoff_base=0.02, backoff_cap=0.16)
    async with agent.running():
        await apiserver.wait_for(Route.PATCH)
        await asyncio.sleep(1.2)

    attempts = apiserver.of(Route.PATCH)
    # Never sooner than the jittered delay: no retry storm ...
    assert len(attempts) <= 1.2 / 0.08 + 5
    for attempt, gap in enumerate(gaps(attempts)):
        assert gap >= min(0.16, 0.02 * 2**attempt) / 2 - 0.01
    # ... and capped: doubling on from 0.02 s would leave gaps of 0.32 s and more by now.
    assert len(attempts) >= 8
    assert statistics.median(gaps(attempts)[4:]) <= 0.16 + 0.08
    assert agent.status.health is ApiHealth.UNAVAILABLE
    sample = agent.metrics.registry.get_sample_value
    counted = sample("readiness_gate_api_requests_total", {"verb": "patch", "code": str(code)})
    assert counted in {len(attempts) - 1, len(attempts)}  # the last one may be in flight


async def test_connection_refused_backs_off_and_the_latest_state_is_written_on_return(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(backoff_base=0.05, backoff_cap=0.2)
    async with agent.running():
        await agent.written(1)
        await apiserver.stop()
        agent.report(CheckState.READY)  # a transition during the outage ...
        await asyncio.sleep(0.3)
        agent.report(CheckState.NOT_READY)
        await asyncio.sleep(0.1)
        agent.report(CheckState.READY, "HTTP 200 again")  # ... and the state at its end
        await asyncio.sleep(0.3)
        down = apiserver.requests[:]
        await apiserver.start()
        await agent.written(2)
        await asyncio.sleep(QUIET)

    assert sent(apiserver)[:2] == [r for r in down if r.route is not Route.WATCH]
    after = sent(apiserver)[2:]
    assert [r.route for r in after] == [Route.PATCH, Route.EVENT]
    condition = only_condition(after[0])
    assert (condition["status"], condition["message"]) == ("True", "file APP: HTTP 200 again")
    (unavailable,) = events(logs, "api_unavailable")
    # The first verb to fail says it: a write refused, or the watch cut by the shutdown.
    assert any(word in unavailable["error"] for word in ("Cannot connect", "refused", "closed"))
    (recovered,) = events(logs, "api_recovered")
    assert recovered["after"] == "unavailable"


@pytest.mark.timeout(10)  # the bug this guards against blocked the event loop for good
async def test_a_change_undone_during_the_backoff_leaves_the_writer_idle(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    apiserver.set_condition(
        {
            "type": GATE,
            "status": "False",
            "reason": "CheckFailed",
            "message": "file APP: connection refused",
            "lastTransitionTime": "2024-05-01T10:00:00Z",
        }
    )
    apiserver.script(Route.PATCH, Reply(status=503))
    agent = make_agent(backoff_base=0.2)
    agent.report(CheckState.NOT_READY)
    async with agent.running():
        await eventually(lambda: agent.writer.status.synced)
        agent.report(CheckState.READY)
        await apiserver.wait_for(Route.PATCH)
        agent.report(CheckState.NOT_READY)  # what the server already says: nothing to retry
        slept = time.monotonic()
        await asyncio.sleep(0.4)  # past the retry time
        assert time.monotonic() - slept < 1.0  # the event loop was not starved
        assert len(sent(apiserver)) == 2
        agent.report(CheckState.READY)
        await agent.written(1)

    assert [r.status for r in apiserver.of(Route.PATCH)] == [503, 200]


async def test_a_failed_reread_is_retried_after_the_backoff_not_a_resync_later(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(resync=0.6, backoff_base=0.05)
    async with agent.running():
        await agent.written(1)
        apiserver.script(Route.GET, Reply(status=503))
        failed, retried = (await apiserver.wait_for(Route.GET, count=3))[1:3]

    assert failed.status == 503
    assert retried.at - failed.at < 0.3


async def test_after_an_outage_only_the_latest_desired_state_is_written(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(backoff_base=0.05, backoff_cap=0.1)
    async with agent.running():
        await agent.written(1)
        apiserver.fail(Reply(status=503), Route.PATCH)
        for state in (CheckState.READY, CheckState.NOT_READY, CheckState.READY):
            agent.report(state)
            await asyncio.sleep(0.15)
        agent.report(CheckState.NOT_READY, "HTTP 500")
        await asyncio.sleep(0.15)
        apiserver.fail(None)
        await agent.written(2)
        await asyncio.sleep(QUIET)

    failed = [p for p in apiserver.of(Route.PATCH) if p.status == 503]
    assert len(failed) >= 3
    success = apiserver.served(Route.PATCH)[1]
    assert only_condition(success)["message"] == "file APP: HTTP 500"
    assert len(apiserver.served(Route.PATCH)) == 2  # the states in between are not replayed
    # False before and after: the outage's True never landed, so this is no transition.
    first = only_condition(apiserver.served(Route.PATCH)[0])
    assert only_condition(success)["lastTransitionTime"] == first["lastTransitionTime"]
    assert len(events(logs, "api_unavailable")) == 1
    assert len(events(logs, "api_recovered")) == 1


async def test_a_hung_request_ends_within_the_request_timeout_and_is_retried(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.PATCH, HANG)
    agent = make_agent(request_timeout=0.5, backoff_base=0.05)
    async with agent.running():
        await agent.written(1)
    hung, retry = apiserver.of(Route.PATCH)[:2]

    assert hung.status is None  # never answered
    assert 0.5 <= retry.at - hung.at < 0.5 + 0.05 + 0.5
    assert retry.status == 200
    (unavailable,) = events(logs, "api_unavailable")
    assert "no answer within 0.5s" in unavailable["error"]
    assert events(logs, "api_recovered")


async def test_a_hung_first_read_ends_within_the_request_timeout(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    apiserver.script(Route.GET, HANG)
    agent = make_agent(request_timeout=0.4)
    async with agent.running():
        await agent.written(1)

    first, second = apiserver.of(Route.GET)
    # The timeout also covers building the client, which comes before the first arrival.
    assert 0.25 <= second.at - first.at < 0.4 + 0.05 + 0.6
    assert agent.writer.status.synced


async def test_a_dropped_connection_is_retried_after_a_backoff(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.PATCH, DROP, DROP)
    agent = make_agent(backoff_base=0.1)
    async with agent.running():
        await agent.written(1)

    first, second, third = apiserver.of(Route.PATCH)
    assert [first.status, second.status, third.status] == [None, None, 200]
    assert second.at - first.at >= 0.05 - 0.01
    assert third.at - second.at >= 0.1 - 0.01
    assert len(events(logs, "api_unavailable")) == 1
    assert len(events(logs, "api_recovered")) == 1


async def test_too_many_requests_waits_as_long_as_retry_after_says(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(
        Route.PATCH, Reply(status=429, message="storage is (re)initializing", retry_after="1")
    )
    agent = make_agent(backoff_base=0.02)
    async with agent.running():
        await agent.written(1)

    throttled, retry = apiserver.of(Route.PATCH)
    assert throttled.status == 429
    assert 1.0 - 0.01 <= retry.at - throttled.at < 1.6
    (warning,) = events(logs, "api_throttled")
    assert warning["log_level"] == "warning"
    assert len(events(logs, "api_recovered")) == 1


# --- failures: credentials, permissions, the Pod -------------------------------------------------


async def test_unauthorized_rereads_the_token_file_and_retries_at_once(
    make_agent: MakeAgent, apiserver: FakeApiServer, token_file: Path, logs: list[EventDict]
) -> None:
    apiserver.tokens = {TOKEN}
    agent = make_agent(backoff_base=1.0)  # a backoff would show as a gap of half a second
    async with agent.running():
        await agent.written(1)
        # The kubelet rotates the token. The file keeps its inode, size and mtime here, so
        # only the 401 makes the client read it again.
        stat = token_file.stat()
        token_file.write_text(NEW_TOKEN + "\n")
        os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert (token_file.stat().st_ino, token_file.stat().st_size) == (
            stat.st_ino,
            stat.st_size,
        )
        apiserver.tokens = {NEW_TOKEN}
        agent.report(CheckState.READY)
        await agent.written(2)

    rejected, accepted = apiserver.of(Route.PATCH)[1:3]
    assert (rejected.status, rejected.authorization) == (401, f"Bearer {TOKEN}")
    assert (accepted.status, accepted.authorization) == (200, f"Bearer {NEW_TOKEN}")
    assert accepted.at - rejected.at < 0.3
    assert only_condition(accepted)["status"] == "True"
    assert len(events(logs, "api_unauthorized")) == 1
    assert len(events(logs, "api_recovered")) == 1


async def test_a_new_token_file_is_used_by_the_next_request_without_a_rejection(
    make_agent: MakeAgent, apiserver: FakeApiServer, token_file: Path
) -> None:
    agent = make_agent()
    async with agent.running():
        await agent.written(1)
        replacement = token_file.with_name("token.new")
        replacement.write_text(NEW_TOKEN)
        replacement.replace(token_file)  # what the kubelet's ..data swap looks like
        agent.report(CheckState.READY)
        await agent.written(2)

    assert apiserver.of(Route.PATCH)[1].authorization == f"Bearer {NEW_TOKEN}"


async def test_a_token_that_stays_rejected_backs_off(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.tokens = {"a-token-this-agent-does-not-have"}
    agent = make_agent(backoff_base=0.1, backoff_cap=0.4)
    async with agent.running():
        await apiserver.wait_for(Route.GET, count=2)
        await asyncio.sleep(1.0)

    reads = apiserver.of(Route.GET)
    assert all(r.status == 401 for r in reads)
    assert reads[1].at - reads[0].at < 0.3  # the first rejection is retried at once
    assert all(gap >= 0.05 - 0.01 for gap in gaps(reads[1:]))
    assert len(reads) <= 8
    assert len(events(logs, "api_unauthorized")) == 1
    assert not agent.writer.status.synced
    assert not apiserver.of(Route.WATCH)


async def test_forbidden_is_logged_once_with_the_missing_role_rule_until_it_is_granted(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    denied = (
        f'pods "{POD}" is forbidden: User "system:serviceaccount:{NS}:gate" cannot patch '
        f'resource "pods/status" in API group "" in the namespace "{NS}"'
    )
    apiserver.fail(Reply(status=403, message=denied), Route.PATCH)
    agent = make_agent(resync=0.15, backoff_base=0.05, backoff_cap=0.1)
    async with agent.running():
        await apiserver.wait_for(Route.PATCH, count=4)
        await apiserver.wait_for(Route.GET, count=3)  # reads succeed: they do not cure a 403
        assert agent.status.health is ApiHealth.FORBIDDEN
        apiserver.fail(None)
        await agent.written(1)

    (error,) = events(logs, "api_forbidden")
    assert error["log_level"] == "error"
    assert denied in error["error"]
    assert 'resources: ["pods/status"], verbs: ["patch"]' in error["error"]
    assert f"Role in namespace {NS}" in error["error"]
    assert "RoleBinding" in error["error"]
    (recovered,) = events(logs, "api_recovered")
    assert recovered["after"] == "forbidden"


async def test_forbidden_read_names_the_get_pods_rule(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.GET, Reply(status=403, message="pods is forbidden"))
    agent = make_agent()
    async with agent.running():
        await agent.written(1)

    (error,) = events(logs, "api_forbidden")
    assert 'resources: ["pods"], verbs: ["get"]' in error["error"]


async def test_a_pod_gone_at_start_stops_the_writer_and_is_logged_once(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.pod = None
    agent = make_agent()
    async with agent.running() as task:
        await asyncio.wait_for(task, SETTLE)
        agent.report(CheckState.READY)
        await asyncio.sleep(0.1)

    assert [(r.route, r.status) for r in apiserver.requests] == [(Route.GET, 404)]
    assert agent.status.health is ApiHealth.POD_GONE
    (error,) = events(logs, "api_pod_gone")
    assert f"pod {NS}/{POD} no longer exists (404" in error["error"]


async def test_a_pod_gone_when_patching_stops_the_writer(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent()
    async with agent.running() as task:
        await agent.written(1)
        apiserver.watches_hang = True  # the watch has not told yet
        apiserver.pod = None
        agent.report(CheckState.READY)
        await asyncio.wait_for(task, SETTLE)

    assert [(r.route, r.status) for r in sent(apiserver)[2:]] == [(Route.PATCH, 404)]
    assert len(events(logs, "api_pod_gone")) == 1


async def test_a_deleted_pod_seen_on_the_watch_stops_the_observer_and_the_writer(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent()
    async with agent.running() as task:
        await agent.written(1)
        apiserver.delete_pod()
        await asyncio.wait_for(task, SETTLE)
        agent.report(CheckState.READY)
        await asyncio.sleep(0.1)

    assert len(apiserver.of(Route.PATCH)) == 1
    assert len(apiserver.of(Route.WATCH)) == 1  # not reopened
    (error,) = events(logs, "api_pod_gone")
    assert f"pod {NS}/{POD} was deleted" in error["error"]


async def test_a_replaced_pod_seen_on_a_reread_stops_the_writer(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(resync=0.1)
    async with agent.running() as task:
        await agent.written(1)
        apiserver.watches_hang = True  # only the resync's read sees it
        apiserver.replace_pod("11111111-2222-3333-4444-555555555555")
        await asyncio.wait_for(task, SETTLE)
        agent.report(CheckState.READY)
        await asyncio.sleep(0.1)

    assert len(apiserver.of(Route.PATCH)) == 1
    assert apiserver.condition(GATE) is None  # the new Pod's gate is not ours to write
    (error,) = events(logs, "api_pod_gone")
    assert "replaced" in error["error"]


async def test_a_replaced_pod_refuses_the_patch_by_its_uid_and_the_writer_stops(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent()
    async with agent.running() as task:
        await agent.written(1)
        apiserver.watches_hang = True  # the patch comes before the watch tells
        apiserver.replace_pod("11111111-2222-3333-4444-555555555555")
        agent.report(CheckState.READY)
        await asyncio.wait_for(task, SETTLE)

    assert apiserver.of(Route.PATCH)[-1].status == 409
    assert apiserver.condition(GATE) is None
    assert len(events(logs, "api_pod_gone")) == 1


async def test_without_pod_uid_the_uid_read_first_guards_every_patch(
    make_agent: MakeAgent, apiserver: FakeApiServer
) -> None:
    agent = make_agent(uid=None)
    async with agent.running() as task:
        (patch,) = await agent.written(1)
        apiserver.watches_hang = True
        apiserver.replace_pod("11111111-2222-3333-4444-555555555555")
        agent.report(CheckState.READY)
        await asyncio.wait_for(task, SETTLE)

    assert patch.body["metadata"] == {"uid": UID}
    assert apiserver.of(Route.PATCH)[-1].status == 409


async def test_an_invalid_patch_is_logged_once_and_retried_with_backoff(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(Route.PATCH, *[Reply(status=422, message="conditions[0].type: Invalid")] * 3)
    agent = make_agent(backoff_base=0.05)
    async with agent.running():
        await agent.written(1)

    assert [p.status for p in apiserver.of(Route.PATCH)] == [422, 422, 422, 200]
    (error,) = events(logs, "api_rejected")
    assert "patch rejected (422)" in error["error"]
    assert len(events(logs, "api_recovered")) == 1


# --- shutdown ----------------------------------------------------------------------------------


async def test_write_stopped_writes_false_agent_stopped(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent()
    agent.report(CheckState.READY)
    async with agent.running():
        (ready,) = await agent.written(1)
    await agent.writer.write_stopped()

    stopped = only_condition(apiserver.served(Route.PATCH)[-1])
    assert (stopped["status"], stopped["reason"]) == ("False", "AgentStopped")
    assert "GATE_ON_SHUTDOWN=false" in stopped["message"]
    assert stopped["lastTransitionTime"]
    assert apiserver.served(Route.PATCH)[-1].body["metadata"] == {"uid": UID}
    assert only_condition(ready)["status"] == "True"
    assert events(logs, "gate_written_on_shutdown")


async def test_write_stopped_gives_up_after_its_short_timeout(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    agent = make_agent(request_timeout=5.0)
    async with agent.running():
        await agent.written(1)
    apiserver.script(Route.PATCH, HANG)
    started = time.monotonic()
    await agent.writer.write_stopped()
    elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 1.5  # SHUTDOWN_WRITE_TIMEOUT, not the request timeout
    (warning,) = events(logs, "gate_not_written_on_shutdown")
    assert "no answer within 0.5s" in warning["error"]


# --- logging -----------------------------------------------------------------------------------


async def test_each_failure_kind_is_logged_when_it_starts_and_recovery_once_when_it_ends(
    make_agent: MakeAgent, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.script(
        Route.GET,
        *[Reply(status=503)] * 3,
        *[Reply(status=429, retry_after="0")] * 2,
        Reply(status=500),
    )
    agent = make_agent(backoff_base=0.02, backoff_cap=0.05)
    async with agent.running():
        await agent.written(1)

    api = [e["event"] for e in logs if e["event"].startswith("api_")]
    assert api == ["api_unavailable", "api_throttled", "api_unavailable", "api_recovered"]
    assert len(apiserver.of(Route.GET)) == 7


# --- configuration of the transport --------------------------------------------------------------


async def test_in_cluster_configuration_is_https_with_the_ca_and_the_token_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "ca.crt").write_text("not read until the first request\n")
    access = ApiAccess(token_dir=tmp_path, service_host="fd00::1", service_port="6443")
    configuration, invalidate = await build_configuration(access)

    assert configuration.host == "https://[fd00::1]:6443"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert await configuration.get_api_key_with_prefix("BearerToken") == f"Bearer {TOKEN}"
    (tmp_path / "token").write_text(NEW_TOKEN + "\n")
    invalidate()
    assert await configuration.get_api_key_with_prefix("BearerToken") == f"Bearer {NEW_TOKEN}"


async def test_a_missing_token_file_is_reported_as_a_credentials_problem(
    make_agent: MakeAgent, apiserver: FakeApiServer, token_file: Path, logs: list[EventDict]
) -> None:
    token_file.unlink()
    agent = make_agent(backoff_base=0.05)
    async with agent.running():
        await eventually(lambda: bool(events(logs, "api_unavailable")))
        token_file.write_text(TOKEN)
        await agent.written(1)

    (warning,) = events(logs, "api_unavailable")
    assert f"cannot read the ServiceAccount token {token_file}" in warning["error"]
