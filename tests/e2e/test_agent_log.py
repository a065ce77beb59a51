"""The agent against the real control plane: a log check drives the gate and the kubelet's Ready."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.agent import STOP_BOUND, AgentProcess
from tests.harness.kube import KubeClient
from tests.harness.workloads import GATE, PodRef, wait_gate, wait_ready

pytestmark = pytest.mark.all_versions


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
    first_write = agent.wait_for_log("gate_written")
    assert first_write["reason"] == "ChecksPending"  # at once, before the checks decide
    pending = wait_gate(admin, pod, "False", agent)
    assert pending["lastTransitionTime"]

    log.parent.mkdir()
    log.write_text("Starting Servlet engine\nServer startup in 1234 ms\n")
    ready = wait_gate(admin, pod, "True", agent)
    wait_ready(admin, pod, "True")
    assert ready["reason"] == "ChecksPassed"
    assert "log APP" in ready["message"]

    with log.open("a") as out:
        out.write("SEVERE: Servlet engine stopped\n")
    failed = wait_gate(admin, pod, "False", agent)
    assert failed["reason"] == "CheckFailed"
    assert 'fail pattern "SEVERE" seen' in failed["message"]
    wait_ready(admin, pod, "False")
    assert agent.stop() < STOP_BOUND
    assert agent.returncode == 0
    assert "Traceback" not in agent.stderr
