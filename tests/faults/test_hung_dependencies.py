"""Hung dependencies: every check kind that can hang, hangs, and the agent stays responsive.

- ``tcp`` to a listener that accepts and never says anything (``EXPECT`` waits for a banner; the
  check gives up a little before the timeout, at ``REPLY_PATIENCE`` of it, to say what it got);
- ``tcp`` to a listener whose accept backlog is full (it never accepts: the SYN is dropped, the
  connect never completes);
- ``http`` to a server that accepts the request and never answers;
- ``exec`` of a command that hangs (``sh -c 'sleep ...'``: the grandchild must die too).

Each probe must end at its timeout (the durations in ``/status``), fail with "timed out after
0.5s" (the banner check: "no reply ... yet (got nothing)"), and leave nothing behind (no stray
processes, no growing descriptors); the gate is False; ``/healthz`` answers 200 within 100 ms
throughout, because a probe that times out is a probe on schedule and the event loop is never
blocked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.checks.tcp import REPLY_PATIENCE
from tests.faults.support import (
    HEALTHZ_BOUND,
    Record,
    children,
    finish,
    healthz_latency,
    open_fd_count,
    wait_check,
    wait_gate,
)
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import PodRef

TIMEOUT = 0.5
PERIOD = 1.0
SLEEP_ARG = f"1000.{os.getpid()}"  # identifies this run's hung commands
OBSERVE = 6.0
TIMED_OUT = f"timed out after {TIMEOUT:g}s"
#: What each check's probes must say, and how long they must take: (detail part, duration).
EXPECTED = {
    "SILENT": ("yet (got nothing)", REPLY_PATIENCE * TIMEOUT),
    "BACKLOG": (TIMED_OUT, TIMEOUT),
    "WEB": (TIMED_OUT, TIMEOUT),
    "CMD": (TIMED_OUT, TIMEOUT),
}
LATE = 0.25  # how late a timed-out probe may end on a slow, shared machine


class BlackHole:
    """Accepts every connection and never answers (holding the connections open)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="black-hole", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self._sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self._sock.close()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listener that never accepts, its accept queue already full: connects hang (SYN drop)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _sleepers() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if SLEEP_ARG.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_hung_checks_time_out_on_time_and_healthz_stays_fast(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    black_hole: BlackHole,
    record: Record,
) -> None:
    with full_backlog() as backlog_port:
        pod = make_pod()
        agent = start_agent(
            pod,
            GATE_PERIOD_SECONDS=str(PERIOD),
            GATE_TIMEOUT_SECONDS=str(TIMEOUT),
            GATE_FAILURE_THRESHOLD="1",
            CHECK_SILENT_KIND="tcp",
            CHECK_SILENT_ADDRESS=f"127.0.0.1:{black_hole.port}",
            CHECK_SILENT_EXPECT="^220 ",
            CHECK_BACKLOG_KIND="tcp",
            CHECK_BACKLOG_ADDRESS=f"127.0.0.1:{backlog_port}",
            CHECK_WEB_KIND="http",
            CHECK_WEB_URL=f"http://127.0.0.1:{black_hole.port}/health",
            CHECK_CMD_KIND="exec",
            CHECK_CMD_COMMAND=f"sh -c 'sleep {SLEEP_ARG}'",
        )
        for check, (detail, _) in EXPECTED.items():
            wait_check(agent, check, state="not_ready", detail=detail)
        for check in EXPECTED:  # the gate's message names every failed check
            wait_gate(admin, pod, "False", agent, reason="CheckFailed", message=f"{check}: ")
        fds_before = open_fd_count(agent.pid)

        latencies: list[float] = []
        durations: dict[str, list[float]] = {}
        started = time.monotonic()
        next_status = started
        while time.monotonic() - started < OBSERVE:
            latencies.append(healthz_latency(agent))
            if time.monotonic() >= next_status:
                next_status += TIMEOUT
                for check_id, status in agent.status()["checks"].items():
                    last = status["last"]
                    assert EXPECTED[check_id][0] in last["detail"], (check_id, last)
                    durations.setdefault(check_id, []).append(last["duration"])
                assert len(children(agent.pid)) <= 1  # at most the one running command
            time.sleep(0.05)

        record("healthz_requests", len(latencies), "")
        record("healthz_max_latency", max(latencies), "s")
        for check_id, measured in durations.items():
            bound = EXPECTED[check_id][1]
            record(f"{check_id}_probe_duration_max", max(measured), "s")
            record(f"{check_id}_overshoot_max", max(measured) - bound, "s")
            assert bound - 0.01 <= min(measured), (check_id, measured)
            assert max(measured) <= bound + LATE, (check_id, measured)
        assert max(latencies) < HEALTHZ_BOUND, sorted(latencies)[-5:]
        probes = {k: len(set(v)) for k, v in durations.items()}
        assert all(n >= 3 for n in probes.values()), probes  # still probing every period
        assert open_fd_count(agent.pid) <= fds_before + 4  # no leak per probe
        assert len(black_hole.accepted) >= 2 * OBSERVE / PERIOD  # each probe connected anew
        finish(agent, record)
    wait_for("no command left running", lambda: not _sleepers(), timeout=5)
