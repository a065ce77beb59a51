"""How old and how complete the log check's evidence is: a big log at an agent restart, a stale
heartbeat found at start, and log paths behind symbolic links.

- **A big log never causes an outage.** The Pod is True; the agent restarts and finds a 256 MiB
  log, far more than it can read within its probe timeout (0.2 s here). While it reads, its
  probes are inconclusive: the check stays pending, nothing is written, the gate stays True.
- **A heartbeat is as old as the evidence.** The only heartbeat line in the log is three hours old
  (the file's mtime): with ``MAX_AGE_SECONDS=10`` the gate is False from the first probe on.
- **Symbolic links keep their wake-ups.** A log path that is a link into another directory, a
  ConfigMap-style ``..data`` swap, a re-pointed link: with a 60 s period, only inotify can explain
  a gate that follows a line within seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.followed import FAIL, FAIL_SEEN, NOISE, NOT_SEEN, READY, Followed, MiB
from tests.faults.support import (
    Record,
    check_states,
    finish,
    gate_condition,
    healthz_latency,
    metric,
    project_files,
    rss_bytes,
    wait_check,
)
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import GATE, PodRef

BIG = 256 * MiB
#: Only inotify wake-ups can explain a gate that follows a line this quickly.
EVENT_DRIVEN = {"GATE_PERIOD_SECONDS": "60", "GATE_TIMEOUT_SECONDS": "2.5"}
WOKEN_WITHIN = 5.0


def _fill(path: Path, size: int) -> None:
    line = b"2024-11-26 16:40:00,000 INFO  [http-nio-8080-exec-1] OrderService - order processed\n"
    block = line * (MiB // len(line))
    with path.open("ab") as out:
        while out.tell() < size:
            out.write(block)


def test_an_agent_restart_on_a_big_log_keeps_the_gate_true_while_it_reads(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    record: Record,
) -> None:
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    pod = make_pod()
    # written after the container started (older evidence would not count)
    log.write_text("Starting Servlet engine\n" + READY)
    env = {
        "GATE_CONDITION_TYPE": GATE,
        "CHECK_APP_KIND": "log",
        "CHECK_APP_PATH": str(log),
        "CHECK_APP_PATTERN": r"Server startup in \d+ ms",
        "CHECK_APP_FAIL_PATTERN": "SEVERE",
        "GATE_PERIOD_SECONDS": "1",
        "GATE_TIMEOUT_SECONDS": "0.2",
        "GATE_FAILURE_THRESHOLD": "1",
    }
    try:
        first = start_agent(pod, **env)
        wait_for(
            "the gate True", lambda: (gate_condition(admin, pod) or {}).get("status") == "True"
        )
        finish(first)
        _fill(log, BIG)  # the application went on logging
        size = log.stat().st_size

        agent = start_agent(pod, **env)
        started = time.monotonic()
        agent.wait_started()
        healthz: list[float] = []

        def ready() -> bool:
            healthz.append(healthz_latency(agent))
            return check_states(agent, "APP")[-1:] == ["ready"]

        wait_for("the check ready after the scan", ready, timeout=120, interval=0.05)
        scanned = time.monotonic() - started
        assert check_states(agent, "APP") == ["ready"], agent.describe()  # never not_ready
        inconclusive = metric(agent, "readiness_gate_check_results_total", result="inconclusive")
        failures = metric(agent, "readiness_gate_check_results_total", result="failure")
        record("log_size_mib", size / MiB, "MiB")
        record("agent_start_to_check_ready", scanned, "s")
        record("inconclusive_probes_while_reading", inconclusive, "")
        record("healthz_max_latency_while_reading", max(healthz), "s")
        record("rss_after_scan_mib", rss_bytes(agent.pid) / MiB, "MiB")
        assert inconclusive >= 1, "the scan never outlasted a probe: the test proves nothing"
        assert failures == 0
        written = [(e["status"], e["reason"]) for e in agent.events("gate_written")]
        assert written == [], written  # True on the server, True desired: nothing to write
        cond = gate_condition(admin, pod)
        assert cond is not None
        assert cond["status"] == "True"
        finish(agent, record)
    finally:
        log.unlink(missing_ok=True)  # pytest keeps old temporary directories


def test_a_heartbeat_found_at_start_is_as_old_as_the_file(
    follow: Callable[..., Followed], record: Record, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.write_text(NOISE + READY)
    three_hours_ago = time.time() - 3 * 3600
    os.utime(log, (three_hours_ago, three_hours_ago))

    case = follow(initial=None, CHECK_APP_MAX_AGE_SECONDS="10")
    case.gate("False", "for more than 10s")
    started = time.monotonic()
    case.writer.write(READY)  # a fresh heartbeat
    case.gate("True")
    record("fresh_heartbeat_to_gate_true", time.monotonic() - started, "s")
    assert case.states() == ["not_ready", "ready"]
    finish(case.agent, record)


def _woken(case: Followed, status: str, message: str | None = None) -> float:
    """Seconds until the gate shows ``status``; within :data:`WOKEN_WITHIN`, far below a period."""
    started = time.monotonic()
    case.gate(status, message, timeout=WOKEN_WITHIN)
    return time.monotonic() - started


def test_a_log_path_linked_into_another_directory_keeps_its_wakeups(
    follow: Callable[..., Followed], record: Record, tmp_path: Path
) -> None:
    real = tmp_path / "tomcat" / "logs" / "catalina.out"
    real.parent.mkdir(parents=True)
    real.write_text(NOISE)
    link = tmp_path / "logs" / "app.log"
    link.parent.mkdir()
    link.symlink_to(real)
    case = follow(path=link, initial=None, **EVENT_DRIVEN)
    case.gate("False", NOT_SEEN)
    wait_check(case.agent, "APP", detail=NOT_SEEN)

    case.writer.write(READY)  # through the link, into the real file
    record("linked_ready_line_to_gate_true", _woken(case, "True"), "s")
    case.writer.write(FAIL)
    record("linked_fail_line_to_gate_false", _woken(case, "False", FAIL_SEEN), "s")

    # The link is re-pointed at a file in a third directory: followed, with its own wake-ups.
    other = tmp_path / "other" / "app.log"
    other.parent.mkdir()
    other.write_text(NOISE)
    staging = link.with_name("app.log.new")
    staging.symlink_to(other)
    staging.replace(link)  # the new file has no verdict yet: the latest match stays
    with other.open("a") as out:
        out.write(READY)
    record("re_pointed_link_ready_line_to_gate_true", _woken(case, "True"), "s")
    with other.open("a") as out:
        out.write(FAIL)
    _woken(case, "False", FAIL_SEEN)
    assert case.states() == ["not_ready", "ready", "not_ready", "ready", "not_ready"]
    finish(case.agent, record)


def test_a_log_path_behind_a_configmap_style_data_swap_keeps_its_wakeups(
    follow: Callable[..., Followed], record: Record, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    project_files(volume, {"app.log": NOISE.encode()})
    path = volume / "app.log"
    case = follow(path=path, initial=None, **EVENT_DRIVEN)
    case.gate("False", NOT_SEEN)
    wait_check(case.agent, "APP", detail=NOT_SEEN)

    project_files(volume, {"app.log": (NOISE + READY).encode()})  # ..data swapped atomically
    record("data_swap_to_gate_true", _woken(case, "True"), "s")
    with path.open("a") as out:  # through ..data, into the new version's file
        out.write(FAIL)
    record("fail_line_after_data_swap_to_gate_false", _woken(case, "False", FAIL_SEEN), "s")
    assert case.states() == ["not_ready", "ready", "not_ready"]
    finish(case.agent, record)
