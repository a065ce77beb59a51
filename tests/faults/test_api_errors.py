"""API errors from a fault proxy in front of the real API server: 429 with Retry-After, 500, 503.

The agent reaches the API server only through :class:`tests.faults.proxy.FaultProxy`, which
forwards to the real kube-apiserver with the agent's own token, and answers chosen requests with
errors for a while. The proxy records every request with its arrival time, so the tests measure
what the agent really sends: ``Retry-After`` honoured, exponential backoff with equal jitter
(0.5 s doubling to 16 s: the n-th gap lies in [c/2, c] with c = min(16, 0.5 * 2**n)), no retry
storm, one log line per state change, and the latest desired state written once the API answers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy, Seen
from tests.faults.support import (
    Record,
    api_events,
    finish,
    start_file_agent,
    wait_gate,
)
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import PodRef

STATUS = "/status"
JITTER_SLACK = 0.05  # the proxy and the agent read different clocks at slightly different times
LATE_SLACK = 1.0  # a slow, shared machine may run a timer late; never early


def _gaps(requests: list[Seen]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def _max_in_window(requests: list[Seen], window: float) -> int:
    times = [r.at for r in requests]
    return max((sum(1 for t in times if start <= t < start + window) for start in times), default=0)


def _start(
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    proxy: FaultProxy,
    marker: Path,
) -> tuple[PodRef, AgentProcess]:
    # GATE_EVENTS=false: only the condition writes go through the proxy's PATCH path.
    return start_file_agent(make_pod, start_agent, marker, api_port=proxy.port, GATE_EVENTS="false")


def test_429_retry_after_is_honoured_and_the_latest_state_is_written(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    marker.touch()
    pod, agent = _start(make_pod, start_agent, fault_proxy, marker)
    wait_gate(admin, pod, "True", agent)

    retry_after, window = 3.0, 10.0
    fault_proxy.fail(429, path_suffix=STATUS, seconds=window, retry_after=retry_after)
    started = time.monotonic()
    marker.unlink()  # desired False ...
    wait_for("the first 429", lambda: fault_proxy.seen("PATCH", STATUS), describe=agent.describe)
    time.sleep(4)
    marker.touch()  # ... True ...
    time.sleep(2)
    marker.unlink()  # ... and False again: the latest state
    cond = wait_gate(admin, pod, "False", agent, reason="CheckFailed", timeout=window + 20)
    recovered = time.monotonic() - started
    assert "does not exist" in cond["message"]

    patches = [p for p in fault_proxy.seen("PATCH", STATUS) if p.at >= started]
    throttled = [p for p in patches if p.status == 429]
    gaps = _gaps(patches)
    record("requests_answered_429_in_10s", len(throttled), "")
    record("min_gap_under_429_retry_after_3s", min(gaps), "s")
    record("write_after_429_window_seconds", recovered - window, "s")
    assert len(throttled) <= window / retry_after + 1, [round(g, 2) for g in gaps]
    assert min(gaps) >= retry_after - JITTER_SLACK, [round(g, 2) for g in gaps]
    assert patches[-1].status == 200
    assert recovered <= window + retry_after + LATE_SLACK + 1
    events = api_events(agent)
    assert events.count("api_throttled") == 1, events
    assert events.count("api_recovered") == 1, events
    assert agent.status()["api"]["health"] == "ok"
    finish(agent, record)


@pytest.mark.parametrize("code", [500, 503])
def test_5xx_backs_off_exponentially_without_a_retry_storm(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
    code: int,
) -> None:
    marker = tmp_path / "ready"
    marker.touch()
    pod, agent = _start(make_pod, start_agent, fault_proxy, marker)
    wait_gate(admin, pod, "True", agent)

    window = 8.0
    fault_proxy.fail(code, path_suffix=STATUS, seconds=window)
    started = time.monotonic()
    marker.unlink()
    cond = wait_gate(admin, pod, "False", agent, reason="CheckFailed", timeout=window + 30)
    recovered = time.monotonic() - started

    patches = [p for p in fault_proxy.seen("PATCH", STATUS) if p.at >= started]
    failed = [p for p in patches if p.status == code]
    gaps = _gaps(patches)
    shown = [round(g, 2) for g in gaps]
    for n, gap in enumerate(gaps):
        ceiling = min(16.0, 0.5 * 2**n)
        assert ceiling / 2 - JITTER_SLACK <= gap <= ceiling + LATE_SLACK, (n, shown)
    # 0.25 + 0.5 + 1 + 2 + 4 s are the shortest first gaps: at most 6 requests in 8 s.
    assert len(failed) <= 6, shown
    assert _max_in_window(patches, 1.0) <= 3, shown
    assert patches[-1].status == 200
    record(f"requests_answered_{code}_in_8s", len(failed), "")
    record(f"gaps_under_{code}_seconds", sum(gaps) / max(len(gaps), 1), "s (mean)")
    record(f"write_after_{code}_window_seconds", recovered - window, "s")
    assert "does not exist" in cond["message"]

    # After recovery the backoff is reset: the next transition is written at once.
    started = time.monotonic()
    marker.touch()
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=10)
    record(f"next_write_after_{code}_recovery", time.monotonic() - started, "s")
    assert time.monotonic() - started < 2.0
    events = api_events(agent)
    assert events == ["api_unavailable", "api_recovered"], events
    finish(agent, record)


def test_an_agent_started_while_the_api_fails_syncs_once_it_answers(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    marker.touch()
    fault_proxy.fail(503, methods=("GET", "PATCH", "POST"), seconds=5.0)
    started = time.monotonic()
    pod, agent = _start(make_pod, start_agent, fault_proxy, marker)
    agent.wait_started()
    assert agent.get("/readyz")[0] == 503  # not synchronised with the API server yet
    assert agent.get("/healthz")[0] == 200
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=30)
    assert agent.get("/readyz")[0] == 200
    gets = fault_proxy.seen("GET", path_suffix=f"/pods/{pod.name}")  # reads, not the watch
    record("get_attempts_during_5s_of_503", sum(1 for g in gets if g.status == 503), "")
    record("start_to_gate_true_through_5s_of_503", time.monotonic() - started, "s")
    assert sum(1 for g in gets if g.status == 503) <= 6
    for n, gap in enumerate(_gaps(gets)):
        assert gap >= min(16.0, 0.5 * 2**n) / 2 - JITTER_SLACK, _gaps(gets)
    assert api_events(agent) == ["api_unavailable", "api_recovered"]
    finish(agent, record)
