"""The agent as a real process against the real control plane, one behaviour per test."""

from __future__ import annotations

import calendar
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import JSON, KubeClient, condition, condition_status, wait_for
from tests.harness.legacy_app import FakeRedis, free_port
from tests.harness.workloads import GATE, PodRef, wait_gate, wait_ready

FAST = {"GATE_PERIOD_SECONDS": "0.5", "GATE_TIMEOUT_SECONDS": "0.4", "GATE_FAILURE_THRESHOLD": "1"}


def _pod(admin: KubeClient, pod: PodRef) -> JSON:
    return admin.pod(pod.namespace, pod.name)


@pytest.fixture
def legacy_server() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        app = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.legacy_app", *args], stdout=subprocess.PIPE
        )
        started.append(app)
        return app

    yield start
    for app in started:
        app.terminate()
        app.wait(5)
        if app.stdout:
            app.stdout.close()


@pytest.mark.all_versions
def test_tcp_check_follows_a_banner_server_that_opens_and_closes_its_port(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    legacy_server: Callable[..., subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    pod = make_pod()
    app = legacy_server("--port", str(port), "--banner", "220 legacy ESMTP", "--ready-after", "1")
    agent = start_agent(
        pod,
        GATE_CONDITION_TYPE=GATE,
        CHECK_SMTP_KIND="tcp",
        CHECK_SMTP_ADDRESS=f":{port}",
        CHECK_SMTP_EXPECT="^220 ",
        **FAST,
    )
    ready = wait_gate(admin, pod, "True", agent)
    assert ready["reason"] == "ChecksPassed"
    assert f"tcp SMTP: reply from 127.0.0.1:{port}" in ready["message"]
    wait_ready(admin, pod, "True")

    app.send_signal(signal.SIGUSR1)  # the app closes its port
    failed = wait_gate(admin, pod, "False", agent)
    assert failed["reason"] == "CheckFailed"
    assert "refused" in failed["message"]
    wait_ready(admin, pod, "False")

    app.send_signal(signal.SIGUSR2)  # and opens it again
    wait_gate(admin, pod, "True", agent)
    wait_ready(admin, pod, "True")


#: The benchmark's p99 target for a tcp check's rising edge at the defaults (benchmarks/README.md).
FAST_TARGET = 0.300


def test_a_redis_that_opens_its_port_turns_the_condition_true_within_the_fast_probe_target(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
) -> None:
    """The tcp check probes every 0.1 s (the default fast period) until its first success.

    The period is 30 s here, so that the periodic probes alone could not explain a quick True.
    """
    port = free_port()
    pod = make_pod()
    agent = start_agent(
        pod,
        GATE_CONDITION_TYPE=GATE,
        GATE_PERIOD_SECONDS="30",
        CHECK_REDIS_KIND="tcp",
        CHECK_REDIS_ADDRESS=f"127.0.0.1:{port}",
        CHECK_REDIS_SEND=r"PING\r\n",
        CHECK_REDIS_EXPECT=r"^\+PONG",
    )
    wait_gate(admin, pod, "False", agent, reason="ChecksPending")
    # it probes the closed port fast, not once per period (that would take 60 s for 3 more)
    wait_for(
        "fast probes of the closed port",
        lambda: _results_total(agent, "failure") >= 4,
        timeout=5,
        describe=agent.describe,
    )

    redis = FakeRedis(port, loading=False)
    try:
        written = agent.wait_for_log("gate_written", lambda e: e.get("status") == "True")
        passed = wait_gate(admin, pod, "True", agent)
    finally:
        redis.close()
    assert passed["reason"] == "ChecksPassed"
    assert f"tcp REDIS: reply from 127.0.0.1:{port} matches" in passed["message"]
    # the agent logs gate_written when the API server has answered the PATCH: condition True
    assert _log_time(written) - redis.listened_at <= FAST_TARGET, agent.describe()
    wait_ready(admin, pod, "True")


def _results_total(agent: AgentProcess, result: str) -> float:
    code, body = agent.get("/metrics")
    assert code == 200, body
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("readiness_gate_check_results_total{") and f'result="{result}"' in line
    )


def _log_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


@pytest.mark.all_versions
def test_file_marker_present_then_removed_flips_the_gate(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "run" / "ready"
    pod = make_pod()
    agent = start_agent(
        pod, CHECK_MARK_KIND="file", CHECK_MARK_PATH=str(marker), CHECK_MARK_CONTAINS="ok", **FAST
    )
    first = wait_gate(admin, pod, "False", agent)
    assert "does not exist" in first["message"]
    marker.parent.mkdir()
    marker.write_text("ok\n")
    wait_gate(admin, pod, "True", agent)
    wait_ready(admin, pod, "True")
    marker.unlink()
    wait_gate(admin, pod, "False", agent)
    wait_ready(admin, pod, "False")


def test_condition_type_is_taken_from_the_pods_only_readiness_gate(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod(gates=["example.com/only-gate"])
    marker.touch()  # after the container started (older evidence does not count)
    agent = start_agent(pod, CHECK_M_KIND="file", CHECK_M_PATH=str(marker), **FAST)
    wait_gate(admin, pod, "True", agent, gate="example.com/only-gate")
    wait_ready(admin, pod, "True")


def test_http_and_exec_checks_feed_two_gates_of_one_pod(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    legacy_server: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    web_root = tmp_path / "www"
    web_root.mkdir()
    (web_root / "health").write_text("status: UP\n")
    port = free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(web_root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        flag = tmp_path / "db-up"
        pod = make_pod(gates=["example.com/web", "example.com/db"])
        agent = start_agent(
            pod,
            CHECK_WEB_KIND="http",
            CHECK_WEB_URL=f"http://127.0.0.1:{port}/health",
            CHECK_WEB_BODY="status: UP",
            CHECK_WEB_GATE="example.com/web",
            CHECK_DB_KIND="exec",
            CHECK_DB_COMMAND=f"test -e {flag}",
            CHECK_DB_GATE="example.com/db",
            **FAST,
        )
        web = wait_gate(admin, pod, "True", agent, gate="example.com/web")
        assert "http WEB" in web["message"]
        db = wait_gate(admin, pod, "False", agent, gate="example.com/db")
        assert "exec DB: exit status 1" in db["message"]
        wait_ready(admin, pod, "False")
        flag.touch()
        wait_gate(admin, pod, "True", agent, gate="example.com/db")
        wait_ready(admin, pod, "True")
    finally:
        http.terminate()
        http.wait(5)


def test_describe_shows_the_gate_reason_and_an_event_per_transition(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    agent = start_agent(pod, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST)
    wait_gate(admin, pod, "False", agent)
    marker.touch()
    wait_gate(admin, pod, "True", agent)

    def described() -> str | None:
        text = control_plane.kubectl("-n", pod.namespace, "describe", "pod", pod.name).stdout
        return text if "ReadinessGateTrue" in text else None

    text = wait_for("the ReadinessGateTrue event in kubectl describe", described)
    assert f"{GATE}   True" in text
    assert "ReadinessGateFalse" in text
    assert "readiness-gate-sidecar" in text


def test_restarted_agent_keeps_an_existing_true_until_its_checks_decide(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    marker.touch()  # by the running application: evidence older than its container would not count
    first = start_agent(pod, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST)
    true_before = wait_gate(admin, pod, "True", first)
    wait_ready(admin, pod, "True")
    first.stop()

    # The initial delay counts from the container's start, as for kubelet probes: 3 s from now.
    started = _pod(admin, pod)["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    delay = time.time() - calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) + 3
    second = start_agent(
        pod,
        CHECK_APP_KIND="file",
        CHECK_APP_PATH=str(marker),
        CHECK_APP_INITIAL_DELAY_SECONDS=f"{delay:.0f}",
        **FAST,
    )
    second.wait_for_log("pod_synced")
    assert second.status()["gates"][GATE]["desired"]["status"] == "Pending"
    still = condition(_pod(admin, pod), GATE)
    assert still == true_before
    assert condition_status(_pod(admin, pod), "Ready") == "True"
    second.wait_for_log("check_state_changed", lambda e: e["state"] == "ready", timeout=10)
    assert condition(_pod(admin, pod), GATE) == true_before
    assert not second.events("gate_written")


def test_undeclared_gate_is_reported_and_never_written(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod(gates=["example.com/something-else"])
    marker.touch()  # after the container started (older evidence does not count)
    agent = start_agent(
        pod, GATE_CONDITION_TYPE=GATE, CHECK_A_KIND="file", CHECK_A_PATH=str(marker), **FAST
    )
    error = agent.wait_for_log("gate_not_declared")
    assert f"conditionType: {GATE}" in error["fix"]
    agent.wait_for_log("check_state_changed", lambda e: e["state"] == "ready")
    status = agent.status()
    assert status["gates"][GATE]["declared_in_pod"] is False
    assert agent.get("/readyz")[0] == 200
    assert condition(_pod(admin, pod), GATE) is None
    assert not agent.events("gate_written")


def test_probe_only_mode_needs_no_api_and_answers_on_gate(
    start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "ready"
    agent = start_agent(
        None, GATE_WRITE="false", CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST
    )
    agent.wait_started()
    wait_for("/gate 503", lambda: agent.get("/gate")[0] == 503)
    wait_for("/readyz 200", lambda: agent.get("/readyz")[0] == 200)
    marker.touch()
    wait_for("/gate 200", lambda: agent.get("/gate")[0] == 200)
    assert not [e for e in agent.logs if str(e.get("event", "")).startswith("api_")]
    assert agent.stop() < 1.0


def test_missing_identity_exits_2_with_the_downward_api_snippet(
    start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = start_agent(None, CHECK_APP_KIND="file", CHECK_APP_PATH=str(tmp_path / "x"))
    assert agent.wait_exit() == 2
    assert "fieldPath: metadata.name" in agent.stderr
    assert "Traceback" not in agent.stderr


def _inotify_fds(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if "inotify" in str(fd.readlink()))


@pytest.mark.parametrize(("event_driven", "watches"), [("true", 1), ("false", 0)])
def test_event_driven_wakeups_can_be_turned_off(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    event_driven: str,
    watches: int,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    agent = start_agent(
        pod,
        CHECK_APP_KIND="file",
        CHECK_APP_PATH=str(marker),
        GATE_EVENT_DRIVEN=event_driven,
        **FAST,
    )
    wait_gate(admin, pod, "False", agent)
    assert _inotify_fds(agent.pid) == watches
    marker.touch()
    wait_gate(admin, pod, "True", agent)
