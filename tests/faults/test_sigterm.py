"""SIGTERM while a write is in flight, while the writer backs off, and during the shutdown write.

README: "SIGTERM: the agent stops within a second." The fault proxy holds a PATCH unanswered (the
API server never replies) or answers 503 (the writer sleeps in its backoff); the agent must exit
within 1 s with status 0 and no traceback either way. With ``GATE_ON_SHUTDOWN=false`` the
shutdown write gets 0.5 s, so even a held shutdown write cannot hold the exit past 1 s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.faults.proxy import FaultProxy
from tests.faults.support import Record, finish, gate_condition, start_file_agent, wait_gate
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import PodRef

STATUS = "/status"


def _agent_through_proxy(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    proxy: FaultProxy,
    marker: Path,
    **env: str,
) -> tuple[PodRef, AgentProcess]:
    marker.touch()
    pod, agent = start_file_agent(make_pod, start_agent, marker, api_port=proxy.port, **env)
    wait_gate(admin, pod, "True", agent)
    return pod, agent


def test_sigterm_during_a_write_the_api_server_never_answers(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod, agent = _agent_through_proxy(admin, make_pod, start_agent, fault_proxy, marker)
    fault_proxy.hold(path_suffix=STATUS)
    marker.unlink()
    wait_for("a held write", lambda: fault_proxy.held == 1, describe=agent.describe)
    elapsed = finish(agent)
    record("sigterm_exit_during_held_write", elapsed, "s")
    cond = gate_condition(admin, pod)
    assert cond is not None
    assert cond["status"] == "True"  # the write never reached the API server


def test_sigterm_during_backoff(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    _, agent = _agent_through_proxy(admin, make_pod, start_agent, fault_proxy, marker)
    fault_proxy.fail(503, path_suffix=STATUS)
    marker.unlink()
    # After the fourth 503 the writer sleeps 4-8 s before it tries again.
    wait_for(
        "four refused writes",
        lambda: len(fault_proxy.seen("PATCH", STATUS)) >= 4,
        describe=agent.describe,
    )
    assert agent.status()["api"]["health"] == "unavailable"
    elapsed = finish(agent)
    record("sigterm_exit_during_backoff", elapsed, "s")


def test_sigterm_with_on_shutdown_false_when_the_shutdown_write_hangs(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    _, agent = _agent_through_proxy(
        admin, make_pod, start_agent, fault_proxy, marker, GATE_ON_SHUTDOWN="false"
    )
    fault_proxy.hold(path_suffix=STATUS)
    elapsed = finish(agent)
    record("sigterm_exit_with_held_shutdown_write", elapsed, "s")
    assert fault_proxy.held == 1  # the shutdown write was attempted, and abandoned
    assert agent.events("gate_not_written_on_shutdown")


def test_sigterm_with_on_shutdown_false_writes_false_when_the_api_answers(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    fault_proxy: FaultProxy,
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod, agent = _agent_through_proxy(
        admin, make_pod, start_agent, fault_proxy, marker, GATE_ON_SHUTDOWN="false"
    )
    elapsed = finish(agent)
    record("sigterm_exit_with_shutdown_write", elapsed, "s")
    cond = gate_condition(admin, pod)
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "AgentStopped")
