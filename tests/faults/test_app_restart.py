"""The legacy application restarts under the agent (``tests/harness/legacy_app.py``).

The app writes a log and listens on a port with a banner. One Pod has two gates: one fed by a
``log`` check of the app's log, one by a ``tcp`` check of its port. The log check learns of a
restart from the app's first line (``CHECK_LOG_START_PATTERN``, "Starting Servlet engine"); a
truncated or replaced log alone is rotation, not a restart. Each restart must take both gates
False and bring them back True only once the new instance is ready: both are False from the new
instance's first line until ``READY_AFTER`` seconds later, when it can log its ready line and open
its port, then both turn True promptly after it says "legacy app: ready" (asserted: within 3 s):

- restarted with its log truncated (an app that opens its log with O_TRUNC): the truncation
  itself keeps the log gate as it was;
- restarted with its log replaced (deleted, then created by the new instance): the deletion
  keeps it too;
- restarted appending to the same log, as Tomcat's ``catalina.sh`` does;
- broken and repaired in place (SIGUSR1: fail line, port closed; SIGUSR2: ready line, port open).

Container restarts seen through the API (``containerStatuses``) are another way to learn of them;
this test has no real node, so it covers what the log alone can tell.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.support import FAST, ROOT, Record, finish, gate_condition, wait_gate
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.legacy_app import free_port
from tests.harness.workloads import PodRef

LOG_GATE = "example.com/log-ready"
PORT_GATE = "example.com/port-ready"
READY_AFTER = 2.0
RESTARTED = "since the application started"


class LegacyApp:
    """One instance of the legacy app, with the time it said it was ready."""

    def __init__(self, log: Path, port: int) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.legacy_app", "--log", str(log),
             "--port", str(port), "--ready-after", str(READY_AFTER)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        self.ready_at: list[float] = []
        self.broken_at: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "ready" in line:
                self.ready_at.append(time.monotonic())
            elif "broken" in line:
                self.broken_at.append(time.monotonic())

    def wait_ready(self, count: int = 1) -> float:
        return wait_for(
            "the app ready", lambda: self.ready_at[-1] if len(self.ready_at) >= count else None
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def legacy_app() -> Iterator[Callable[[Path, int], LegacyApp]]:
    apps: list[LegacyApp] = []

    def start(log: Path, port: int) -> LegacyApp:
        app = LegacyApp(log, port)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def _both(admin: KubeClient, pod: PodRef, status: str, agent: AgentProcess) -> None:
    for gate in (LOG_GATE, PORT_GATE):
        wait_gate(admin, pod, status, agent, gate=gate, timeout=30)


def _gates_while_starting(
    admin: KubeClient, pod: PodRef, app: LegacyApp, agent: AgentProcess, *, restart: bool = True
) -> float:
    """Both gates stay False as long as the new instance cannot be ready (it logs its ready line
    and opens its port ``READY_AFTER`` seconds after it starts), then both turn True; after a
    restart, the log gate turns False at the new instance's first line (the start pattern).
    Returns how long after the app said "ready" the last gate turned True."""
    if restart:
        wait_gate(admin, pod, "False", agent, gate=LOG_GATE, message=RESTARTED, timeout=30)
    cannot_be_ready_before = app.started + READY_AFTER
    while time.monotonic() < cannot_be_ready_before - 0.1:
        for gate in (LOG_GATE, PORT_GATE):
            cond = gate_condition(admin, pod, gate)  # None: not written yet (a new agent)
            assert cond is None or cond["status"] == "False", (
                f"{gate} True before the app was ready"
            )
        assert app.process.poll() is None
        time.sleep(0.05)
    _both(admin, pod, "True", agent)
    latency = max(0.0, time.monotonic() - app.wait_ready())
    assert latency < 3.0, f"gates True {latency:.1f} s after the app was ready"
    return latency


def test_app_restarts_take_both_gates_false_until_it_is_ready_again(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    legacy_app: Callable[[Path, int], LegacyApp],
    tmp_path: Path,
    record: Record,
) -> None:
    log = tmp_path / "logs" / "catalina.out"
    port = free_port()
    pod = make_pod(gates=[LOG_GATE, PORT_GATE])
    app = legacy_app(log, port)
    agent = start_agent(
        pod,
        CHECK_LOG_KIND="log",
        CHECK_LOG_PATH=str(log),
        CHECK_LOG_PATTERN=r"Server startup in \d+ ms",
        CHECK_LOG_FAIL_PATTERN="SEVERE",
        CHECK_LOG_START_PATTERN="Starting Servlet engine",
        CHECK_LOG_GATE=LOG_GATE,
        CHECK_PORT_KIND="tcp",
        CHECK_PORT_ADDRESS=f":{port}",
        CHECK_PORT_EXPECT="^220 ",
        CHECK_PORT_GATE=PORT_GATE,
        **FAST,
    )
    first = _gates_while_starting(admin, pod, app, agent, restart=False)
    record("first_start_ready_to_gates_true", first, "s")

    # 1. Restarted with its log truncated: the truncation is rotation, the new instance's first
    #    line is the restart.
    app.stop()
    wait_gate(admin, pod, "False", agent, gate=PORT_GATE)  # the port closed
    log.write_text("")
    app = legacy_app(log, port)
    record(
        "truncated_restart_ready_to_gates_true", _gates_while_starting(admin, pod, app, agent), "s"
    )

    # 2. Restarted with its log replaced (deleted, then created anew by the new instance).
    app.stop()
    log.unlink()
    wait_gate(admin, pod, "False", agent, gate=PORT_GATE)
    app = legacy_app(log, port)
    record(
        "replaced_restart_ready_to_gates_true", _gates_while_starting(admin, pod, app, agent), "s"
    )

    # 2b. Restarted appending to the same log: the previous instance's ready line is still there.
    app.stop()
    wait_gate(admin, pod, "False", agent, gate=PORT_GATE)
    assert "Server startup in" in log.read_text()
    app = legacy_app(log, port)
    record(
        "appending_restart_ready_to_gates_true", _gates_while_starting(admin, pod, app, agent), "s"
    )

    # 3. Broken and repaired in place: fail line and port closed, then ready line and port open.
    app.process.send_signal(signal.SIGUSR1)
    wait_gate(admin, pod, "False", agent, gate=LOG_GATE, message='fail pattern "SEVERE" seen')
    wait_gate(admin, pod, "False", agent, gate=PORT_GATE, message="refused")
    app.process.send_signal(signal.SIGUSR2)
    started = time.monotonic()
    _both(admin, pod, "True", agent)
    record("repaired_in_place_to_gates_true", time.monotonic() - started, "s")
    finish(agent, record)
