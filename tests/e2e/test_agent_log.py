"""The agent against the real control plane: a log check drives the gate and the kubelet's Ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, condition, condition_status, wait_for
from tests.harness.workloads import GATE, PodRef


def _gate_is(admin: KubeClient, pod: PodRef, status: str) -> Callable[[], bool]:
    return lambda: condition_status(admin.pod(pod.namespace, pod.name), GATE) == status


def test_log_check_turns_gate_and_ready_true_then_false_on_fail_pattern(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    log = tmp_path / "logs" / "catalina.out"
    pod = make_pod()
    agent = start_agent(
        pod,
        GATE_CONDITION_TYPE=GATE,
        CHECK_APP_KIND="log",
        CHECK_APP_PATH=str(log),
        CHECK_APP_PATTERN=r"Server startup in \d+ ms",
        CHECK_APP_FAIL_PATTERN="SEVERE",
        GATE_PERIOD_SECONDS="1",
        GATE_TIMEOUT_SECONDS="0.5",
    )
    agent.wait_started()
    wait_for("the pending condition", _gate_is(admin, pod, "False"), describe=agent.describe)
    pending = condition(admin.pod(pod.namespace, pod.name), GATE)
    assert pending is not None
    assert pending["reason"] == "ChecksPending"
    assert pending["lastTransitionTime"]

    log.parent.mkdir()
    log.write_text("Starting Servlet engine\nServer startup in 1234 ms\n")
    wait_for("gate True", _gate_is(admin, pod, "True"), describe=agent.describe)
    wait_for(
        "Ready True",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == "True",
    )
    ready = condition(admin.pod(pod.namespace, pod.name), GATE)
    assert ready is not None
    assert ready["reason"] == "ChecksPassed"
    assert "log APP" in ready["message"]

    with log.open("a") as out:
        out.write("SEVERE: Servlet engine stopped\n")
    wait_for("gate False", _gate_is(admin, pod, "False"), describe=agent.describe)
    failed = condition(admin.pod(pod.namespace, pod.name), GATE)
    assert failed is not None
    assert failed["reason"] == "CheckFailed"
    assert 'fail pattern "SEVERE" seen' in failed["message"]
    wait_for(
        "Ready False",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == "False",
    )
    assert agent.stop() < 1.0
    assert agent.returncode == 0
    assert "Traceback" not in agent.stderr
