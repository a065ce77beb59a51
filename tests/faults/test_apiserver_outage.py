"""kube-apiserver killed for 60 s and restarted on the same etcd, under a running agent.

During the outage the agent keeps probing (``/status`` shows fresh results, ``/healthz`` stays
200), backs off (0.5 s doubling to 16 s, so about ten attempts a minute, not a storm), and logs
``api_unavailable`` once, not per retry. The check flips several times during the outage; once the
API server answers again, the condition on the Pod is the LATEST state within one backoff cap
(16 s). Afterwards the control plane is back as the rest of the session needs it: the API server
ready, the admission policy enforced, the node Ready and untainted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.support import (
    BACKOFF_CAP,
    FAST,
    Record,
    api_events,
    finish,
    metric,
    wait_gate,
)
from tests.harness.agent import AgentProcess
from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.kube import ApiError, KubeClient, condition_status, wait_for
from tests.harness.workloads import (
    GATE,
    PodRef,
    create_namespace,
    create_pod,
    delete_namespace,
    install_admission_policy,
)

OUTAGE = 60.0


def _node_healthy(admin: KubeClient) -> bool:
    try:
        node = admin.get(f"/api/v1/nodes/{NODE_NAME}")
    except (ApiError, OSError):
        return False
    taints = [t.get("key", "") for t in (node.get("spec") or {}).get("taints") or []]
    unhealthy = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
    return condition_status(node, "Ready") == "True" and not any(t in unhealthy for t in taints)


@pytest.fixture
def outage(control_plane: ControlPlane) -> Iterator[Callable[[], None]]:
    """``stop()`` kills the API server; it is restarted (and the cluster checked) afterwards."""

    def stop() -> None:
        control_plane.stop_apiserver()

    yield stop
    if not control_plane.components["kube-apiserver"].running:
        control_plane.start_apiserver()
    # The controllers' and the kubelet's informers would wait out client-go's reflector backoff
    # (measured: 47-57 s until a new Pod runs); restarted, they list at once.
    control_plane.restart("kube-controller-manager")
    control_plane.restart("kubemark")
    install_admission_policy(control_plane)  # idempotent; waits until it is enforced again
    wait_for("the node Ready again", lambda: _node_healthy(control_plane.admin), timeout=120)
    namespace = create_namespace(control_plane)  # the controllers work again
    try:
        create_pod(control_plane.admin, namespace)  # and the kubelet runs new Pods
    finally:
        delete_namespace(control_plane, namespace)
    for name, component in control_plane.components.items():
        assert component.running, f"{name} is not running after the outage"


def test_outage_backoff_logs_once_and_the_latest_state_wins_after_recovery(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    outage: Callable[[], None],
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    marker.touch()  # after the container started (older evidence does not count)
    agent = start_agent(pod, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST)
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed")
    patches_before = metric(agent, "readiness_gate_api_requests_total", verb="patch")

    outage()
    down = time.monotonic()
    # Flip the check during the outage: False, True, then False again. Only the last counts.
    flips = [(5.0, False), (20.0, True), (35.0, False)]
    seen_fresh = 0
    while time.monotonic() - down < OUTAGE:
        elapsed = time.monotonic() - down
        while flips and elapsed >= flips[0][0]:
            if flips.pop(0)[1]:
                marker.touch()
            else:
                marker.unlink()
        status = agent.status()
        last = status["checks"]["APP"]["last"]
        assert time.time() - last["at"] < 2.5, f"stale check result during the outage: {last}"
        assert agent.get("/healthz")[0] == 200
        seen_fresh += 1
        time.sleep(1.0)
    status = agent.status()
    assert status["api"]["health"] == "unavailable", status["api"]
    assert status["gates"][GATE]["desired"]["status"] == "False"
    attempts = metric(agent, "readiness_gate_api_requests_total", verb="patch") - patches_before
    record("outage_seconds", time.monotonic() - down, "s")
    record("patch_attempts_during_60s_outage", attempts, "")
    # Backoff 0.5 s doubling to 16 s with equal jitter: at most 11 attempts fit in 60 s (the
    # shortest gaps are 0.25, 0.5, 1, 2, 4, 8, 8, 8 ... s), at least 5 (the longest: 0.5 ... 16).
    assert 6 <= attempts <= 12, attempts

    restart = time.monotonic()
    control_plane.start_apiserver()  # returns once /readyz answers ok
    ready = time.monotonic()
    record("apiserver_restart_to_readyz", ready - restart, "s")
    cond = wait_gate(admin, pod, "False", agent, reason="CheckFailed", timeout=BACKOFF_CAP + 30)
    recovered = time.monotonic() - ready
    record("recovery_after_apiserver_ready", recovered, "s")
    assert recovered <= BACKOFF_CAP + 2.0, f"condition correct {recovered:.1f} s after recovery"
    assert "does not exist" in cond["message"]
    agent.wait_for_log("api_recovered", timeout=10)

    events = api_events(agent)
    record("api_unavailable_log_lines", events.count("api_unavailable"), "")
    assert events.count("api_unavailable") == 1, events
    assert events.count("api_recovered") >= 1, events
    assert len(events) <= 4, f"API health logged per retry, not per state change: {events}"
    assert seen_fresh >= 50

    # Back to normal: the next transition is written at once.
    marker.touch()
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=10)
    finish(agent, record)
