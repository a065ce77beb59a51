"""One agent following one log file that a writer process manipulates: the shared setup of the
log-file fault tests (``test_log_files.py``, ``test_log_evidence.py``; the ``follow`` fixture is in
``conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults.support import (
    assert_gate_stays,
    check_states,
    gate_condition,
    metric,
    rss_bytes,
    wait_gate,
)
from tests.faults.writer import LogWriter
from tests.harness.agent import AgentProcess
from tests.harness.kube import JSON, KubeClient, wait_for
from tests.harness.workloads import GATE, PodRef

PATTERN = r"Server startup in \d+ ms"
READY = "Server startup in 1234 ms\n"
FAIL = "SEVERE: Servlet engine stopped\n"
NOISE = "INFO [main] Initializing ProtocolHandler\n"
NOT_SEEN = "not seen in"
MISSING = "does not exist yet"
FAIL_SEEN = 'fail pattern "SEVERE" seen'
STAY = 1.5  # how long a state must hold: longer than the agent's 1 s stat poll
MiB = 1024 * 1024
#: Every probe decides (thresholds 1). Log checks probe on every change of the file, so the period
#: only sets the stat poll (at most 1 s apart); the generous timeout keeps a probe that reads
#: megabytes on a busy machine from failing as "timed out", which would count as a state change.
TIMING = {
    "GATE_PERIOD_SECONDS": "3",
    "GATE_TIMEOUT_SECONDS": "2.5",
    "GATE_FAILURE_THRESHOLD": "1",
    "GATE_SUCCESS_THRESHOLD": "1",
}


@dataclass
class Followed:
    """One agent following one log file that one writer process manipulates."""

    admin: KubeClient
    pod: PodRef
    agent: AgentProcess
    writer: LogWriter
    path: Path

    def gate(self, status: str, message: str | None = None, timeout: float = 30) -> JSON:
        reason = "ChecksPassed" if status == "True" else "CheckFailed"
        return wait_gate(
            self.admin,
            self.pod,
            status,
            self.agent,
            reason=reason,
            message=message,
            timeout=timeout,
        )

    def probes(self) -> float:
        return metric(self.agent, "readiness_gate_check_duration_seconds_count")

    def settled(self) -> None:
        """Wait until a probe that began after everything written so far has ended: probes run one
        at a time, so the second probe to end after now began after now."""
        seen = self.probes()
        wait_for("two more probes", lambda: self.probes() >= seen + 2, timeout=30, interval=0.02)

    def kept(self, status: str) -> None:
        """The gate keeps ``status`` and the check its state through what was just done."""
        before = check_states(self.agent)
        self.settled()
        cond = gate_condition(self.admin, self.pod)
        assert cond is not None
        assert cond["status"] == status, f"gate {cond}\n{self.agent.describe()}"
        assert check_states(self.agent) == before, "the check changed state"

    def stays(self, status: str, seconds: float = STAY) -> None:
        before = check_states(self.agent)
        assert_gate_stays(self.admin, self.pod, status, self.agent, seconds)
        assert check_states(self.agent) == before, "the check changed state meanwhile"

    def states(self) -> list[str]:
        return check_states(self.agent, "APP")

    def rss(self) -> int:
        return rss_bytes(self.agent.pid)


def start_following(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    log_writer: Callable[[Path], LogWriter],
    path: Path,
    *,
    initial: str | None = "",
    directory: bool = True,
    **env: str,
) -> Followed:
    """A Pod, a writer on ``path`` (created with ``initial`` unless ``None``) and the agent with
    one log check on it (``TIMING``; ``env`` overrides and adds)."""
    if directory:
        path.parent.mkdir(parents=True, exist_ok=True)
    pod = make_pod()  # first: what the application writes must not predate its container
    writer = log_writer(path)
    if initial is not None:
        writer.do("create", then=initial)
    agent = start_agent(
        pod,
        GATE_CONDITION_TYPE=GATE,
        CHECK_APP_KIND="log",
        CHECK_APP_PATH=str(path),
        CHECK_APP_PATTERN=PATTERN,
        CHECK_APP_FAIL_PATTERN="SEVERE",
        **(TIMING | env),
    )
    agent.wait_started()
    return Followed(admin=admin, pod=pod, agent=agent, writer=writer, path=path)
