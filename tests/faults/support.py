"""Helpers shared by the fault tests: observing the gate, the agent, the audit log, processes."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import JSON, KubeClient, wait_for
from tests.harness.workloads import GATE, PodRef, gate_condition, wait_gate
from tests.unit.checks.files import project_files

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["gate_condition", "project_files", "wait_gate"]  # re-exported for the fault tests

Record = Callable[[str, float, str], None]
"""``record(name, value, unit)``: a measured number for the run's summary (fixture ``record``)."""

#: Kubelet-like timing, fast: every probe result decides at once. The timeout leaves room for a
#: slow, shared machine: a probe that overruns it fails, and with a threshold of 1 that flips the
#: gate, which a test counting transitions would take for a wrong match.
FAST = {
    "GATE_PERIOD_SECONDS": "1",
    "GATE_TIMEOUT_SECONDS": "0.8",
    "GATE_FAILURE_THRESHOLD": "1",
    "GATE_SUCCESS_THRESHOLD": "1",
}
#: The documented bounds the fault tests assert.
SIGTERM_EXIT_BOUND = 1.0
BACKOFF_CAP = 16.0
HEALTHZ_BOUND = 0.1


# --- the agent --------------------------------------------------------------------------------


def start_file_agent(
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    marker: Path,
    *,
    api_port: int,
    **env: str,
) -> tuple[PodRef, AgentProcess]:
    """A new Pod and its agent with one file check on ``marker``, on :data:`FAST` timing (``env``
    overrides it), talking to the API server through ``api_port`` (a fault proxy)."""
    pod = make_pod()
    agent = start_agent(
        pod, api_port=api_port, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **(FAST | env)
    )
    return pod, agent


# --- the gate on the real Pod ----------------------------------------------------------------


def assert_gate_stays(
    admin: KubeClient,
    pod: PodRef,
    status: str,
    agent: AgentProcess,
    seconds: float,
    gate: str = GATE,
) -> None:
    """The gate keeps ``status`` for ``seconds`` (and the agent stays alive)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cond = gate_condition(admin, pod, gate)
        got = None if cond is None else cond.get("status")
        assert got == status, (
            f"{gate} became {got}, expected it to stay {status}\n{agent.describe()}"
        )
        assert agent.returncode is None, f"agent exited\n{agent.describe()}"
        time.sleep(0.1)


# --- the agent's own view ----------------------------------------------------------------------


def check_status(agent: AgentProcess, check_id: str) -> JSON:
    checks: JSON = agent.status()["checks"]
    found: JSON = checks[check_id]
    return found


def wait_check(
    agent: AgentProcess,
    check_id: str,
    *,
    state: str | None = None,
    detail: str | None = None,
    timeout: float = 30,
) -> JSON:
    """Wait until /status shows the check in ``state`` with ``detail`` in its last result."""

    def probe() -> JSON | None:
        status = check_status(agent, check_id)
        last = status.get("last") or {}
        if state is not None and status["state"] != state:
            return None
        if detail is not None and detail not in str(last.get("detail")):
            return None
        return status

    return wait_for(
        f"check {check_id} state={state} detail~{detail!r}",
        probe,
        timeout=timeout,
        interval=0.02,
        describe=agent.describe,
    )


def check_states(agent: AgentProcess, check_id: str | None = None) -> list[str]:
    """The sequence of states the agent logged for its checks (``check_state_changed``)."""
    return [
        str(e["state"])
        for e in agent.events("check_state_changed")
        if check_id is None or e.get("check") == check_id
    ]


def api_events(agent: AgentProcess) -> list[str]:
    """The agent's API health log events in order: api_unavailable, api_recovered, ..."""
    return [str(e["event"]) for e in list(agent.logs) if str(e.get("event", "")).startswith("api_")]


def assert_no_crash_logs(agent: AgentProcess) -> None:
    """No log line carries an exception, and nothing unparseable (a traceback) was printed."""
    bad = [e for e in list(agent.logs) if "exception" in e or e.get("event") == "unparsed_output"]
    assert not bad, f"the agent logged exceptions: {bad[:3]}"


def finish(agent: AgentProcess, record: Record | None = None) -> float:
    """Stop the agent with SIGTERM and assert a clean exit: within 1 s, status 0, no traceback."""
    assert agent.returncode is None, f"the agent died during the test\n{agent.describe()}"
    elapsed = agent.stop(signal.SIGTERM)
    if record is not None:
        record("sigterm_exit_seconds", elapsed, "s")
    code = agent.wait_exit()
    assert code == 0, f"exit status {code}\n{agent.describe()}"
    assert "Traceback" not in agent.stderr, agent.stderr
    assert not agent.stderr.strip(), f"unexpected stderr: {agent.stderr}"
    assert_no_crash_logs(agent)
    assert elapsed < SIGTERM_EXIT_BOUND, f"SIGTERM exit took {elapsed:.2f} s"
    return elapsed


def metric(agent: AgentProcess, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text)."""
    code, body = agent.get("/metrics")
    assert code == 200, body
    total = 0.0
    for line in body.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def healthz_latency(agent: AgentProcess) -> float:
    started = time.monotonic()
    code, body = agent.get("/healthz", timeout=5)
    elapsed = time.monotonic() - started
    assert code == 200, body
    return elapsed


# --- processes --------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fd_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def open_paths(pid: int, under: Path) -> list[str]:
    """The files under ``under`` that process ``pid`` has open."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith(f"{under}/"):
                found.append(target)
    return found


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def accepted_connections(sock: socket.socket) -> int:
    """How many connections are waiting in ``sock``'s accept queue (accepting them)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


# --- the API server's audit log ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audit:
    """One audit event of the API server: who did what to which object, and the answer."""

    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    received: str
    credential: str  # authentication.kubernetes.io/credential-id: "JTI=<token id>" for a token

    @classmethod
    def parse(cls, entry: dict[str, Any]) -> Audit:
        ref = entry.get("objectRef") or {}
        user = entry.get("user") or {}
        credential = (user.get("extra") or {}).get("authentication.kubernetes.io/credential-id")
        return cls(
            user=str(user.get("username", "")),
            verb=str(entry.get("verb", "")),
            resource=str(ref.get("resource", "")),
            subresource=str(ref.get("subresource", "")),
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int((entry.get("responseStatus") or {}).get("code", 0)),
            received=str(entry.get("requestReceivedTimestamp", "")),
            credential=str(credential[0]) if credential else "",
        )


def audit_log(plane: ControlPlane) -> list[Audit]:
    path = plane.workdir / "audit.log"
    entries: list[Audit] = []
    with contextlib.suppress(FileNotFoundError), path.open() as stream:
        for raw in stream:
            with contextlib.suppress(ValueError):
                entries.append(Audit.parse(json.loads(raw)))
    return entries


def pod_status_requests(plane: ControlPlane, pod: PodRef) -> list[Audit]:
    """Every request on ``pod``'s status subresource, as the audit log records it."""
    return [
        a
        for a in audit_log(plane)
        if a.namespace == pod.namespace
        and a.name == pod.name
        and a.resource == "pods"
        and a.subresource == "status"
        and a.verb == "patch"
    ]


def token_id(token: str) -> str:
    """The ``jti`` claim of a ServiceAccount token, as the audit log's credential-id shows it."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"
