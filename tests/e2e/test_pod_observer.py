"""The agent watches its own Pod on the real API server: repair at once, through restarts.

The agent is a real process with a Pod-bound token and the shipped Role (get, list, watch pods).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import GATE, PodRef, gate_condition, wait_gate

FAST = {"GATE_PERIOD_SECONDS": "0.5", "GATE_TIMEOUT_SECONDS": "0.4", "GATE_FAILURE_THRESHOLD": "1"}
FOREIGN = {"type": GATE, "status": "False", "reason": "SomebodyElse", "message": "not yours"}


def _flip(admin: KubeClient, pod: PodRef) -> float:
    """Another writer (here the admin) turns the gate False; returns when the API accepted it."""
    admin.patch_pod_status(pod.namespace, pod.name, {"status": {"conditions": [FOREIGN]}})
    return time.monotonic()


def _ready_agent(
    admin: KubeClient, make_pod: Callable[..., PodRef], start_agent: Callable[..., AgentProcess],
    tmp_path: Path, **env: str,
) -> tuple[PodRef, AgentProcess]:  # fmt: skip
    pod = make_pod()
    marker = tmp_path / "ready"
    marker.touch()
    agent = start_agent(
        pod, GATE_EVENTS="false", CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST, **env
    )
    wait_gate(admin, pod, "True", agent)
    wait_for("the watch to be open", lambda: agent.status()["api"]["watching"])
    return pod, agent


def test_a_condition_flipped_by_another_writer_is_repaired_within_milliseconds(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    pod, agent = _ready_agent(admin, make_pod, start_agent, tmp_path)  # default resync: 300 s
    latencies = []
    for _ in range(5):
        flipped = _flip(admin, pod)
        wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=10)
        latencies.append(time.monotonic() - flipped)

    # Each repair came from the watch: no read in between (the resync is 300 s away).
    assert max(latencies) < 2.0, latencies
    status = agent.status()
    assert status["api"]["reads"] == 1
    assert status["api"]["watches"] == 1
    assert status["gates"][GATE]["repairs"] == 5
    assert len(agent.events("gate_repaired")) == 5
    print(f"repair latency (foreign PATCH answered -> ours on the server): {sorted(latencies)}")
    assert agent.stop() < 1.0


def test_the_watch_survives_an_api_server_restart(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    pod, agent = _ready_agent(admin, make_pod, start_agent, tmp_path)
    control_plane.stop_apiserver()
    agent.wait_for_log("api_unavailable", timeout=120)  # the watch broke: said once
    control_plane.start_apiserver()
    agent.wait_for_log("api_recovered", timeout=60)
    wait_for("the watch to be open again", lambda: agent.status()["api"]["watching"], timeout=60)

    flipped = _flip(admin, pod)
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=30)
    assert time.monotonic() - flipped < 5.0
    assert agent.status()["api"]["watches"] >= 2
    assert len(agent.events("api_unavailable")) == 1
    condition = gate_condition(admin, pod)
    assert condition is not None
    assert condition["reason"] == "ChecksPassed"
    assert agent.stop() < 1.0
