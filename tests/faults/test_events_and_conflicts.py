"""Events never delay writes and never pile up; a conflict re-reads the Pod; Events name the Pod's
UID even without POD_UID (issue 13, items 5 and 7).

The agent talks to the real API server through the fault proxy, which can hold the Events
endpoint (a write that never answers) or answer a status patch with 409.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.proxy import FaultProxy
from tests.faults.support import Record, api_events, finish, start_file_agent, wait_gate
from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import JSON, KubeClient, wait_for
from tests.harness.workloads import PodRef

EVENTS = "/events"


def _events_of(admin: KubeClient, pod: PodRef) -> list[JSON]:
    found = admin.get(
        f"/api/v1/namespaces/{pod.namespace}/events",
        fieldSelector=f"involvedObject.name={pod.name}",
    )
    return [e for e in found["items"] if e.get("source", {}).get("component") == COMPONENT]


COMPONENT = "readiness-gate-sidecar"


def test_a_hanging_events_endpoint_never_delays_the_gate(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    fault_proxy.hold(methods=("POST", "PATCH"), path_suffix=EVENTS)  # Events never answer
    pod, agent = start_file_agent(make_pod, start_agent, marker, api_port=fault_proxy.port)
    wait_gate(admin, pod, "False", agent)
    slowest = 0.0
    for _ in range(3):
        started = time.monotonic()
        marker.touch()
        wait_gate(admin, pod, "True", agent)
        to_true = time.monotonic() - started
        started = time.monotonic()
        marker.unlink()
        wait_gate(admin, pod, "False", agent, reason="CheckFailed")
        slowest = max(slowest, to_true, time.monotonic() - started)
    record("slowest_flip_with_events_hanging", slowest, "s")
    # Today's main posted each Event inline, before the next write: 9-10 s per flip.
    assert slowest < 2.0
    assert fault_proxy.held >= 1  # Events still hang (each given up after 10 s, then the next)
    finish(agent, record)


def test_a_flapping_gate_makes_two_event_objects_whose_count_grows(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod, agent = start_file_agent(make_pod, start_agent, marker, api_port=fault_proxy.port)
    wait_gate(admin, pod, "False", agent)
    flips = 5
    for _ in range(flips):
        marker.touch()
        wait_gate(admin, pod, "True", agent)
        marker.unlink()
        wait_gate(admin, pod, "False", agent, reason="CheckFailed")

    def counted() -> list[JSON] | None:
        events = _events_of(admin, pod)
        total = sum(int(e.get("count") or 1) for e in events)
        return events if total >= 2 * flips + 1 else None

    events = wait_for("every flip counted", counted, describe=agent.describe)
    record("event_objects_after_10_flips", len(events), "")
    # Today's main created one Event object per flip: eleven of them (the first False too).
    counts = {e["reason"]: int(e["count"]) for e in events}
    assert len(events) == 2
    assert counts == {"ReadinessGateTrue": flips, "ReadinessGateFalse": flips + 1}
    finish(agent, record)


def test_events_carry_the_pods_uid_learned_from_the_first_read_without_pod_uid(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    agent = start_agent(pod, POD_UID="", CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker))
    wait_gate(admin, pod, "False", agent)
    marker.touch()
    wait_gate(admin, pod, "True", agent)

    events = wait_for("the agent's Event", lambda: _events_of(admin, pod) or None)
    # kubectl describe finds a Pod's Events by its UID: today's main left it out.
    assert events[0]["involvedObject"]["uid"] == pod.uid
    finish(agent, record)


def test_a_conflict_rereads_the_pod_before_retrying_the_write(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod, agent = start_file_agent(
        make_pod, start_agent, marker, api_port=fault_proxy.port, GATE_EVENTS="false"
    )
    wait_gate(admin, pod, "False", agent)
    fault_proxy.fail(409, path_suffix="/status", count=1)
    started = time.monotonic()
    marker.touch()
    wait_gate(admin, pod, "True", agent)
    record("conflict_to_written", time.monotonic() - started, "s")

    after = [s for s in fault_proxy.seen() if s.at >= started]
    conflict = next(i for i, s in enumerate(after) if s.status == 409)
    retry = next(i for i, s in enumerate(after) if s.method == "PATCH" and i > conflict)
    # Today's main retried the same patch at the backoff cap without reading the Pod again.
    assert any(s.method == "GET" and not s.path.endswith("/pods") for s in after[conflict:retry])
    assert api_events(agent) == ["api_rejected", "api_recovered"]
    finish(agent, record)
