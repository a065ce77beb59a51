"""One check never delays another: a name server that never answers.

The agent runs in a private mount namespace (``unshare --mount``) whose ``/etc/resolv.conf`` is
bind-mounted to a Pod-like one: ``nameserver 127.0.0.1``, three search domains, ``ndots:5
attempts:2``. On 127.0.0.1:53 (inside the test's private network namespace) a UDP socket reads
every query and never answers, so every ``getaddrinfo`` the agent makes for a host name hangs for
the resolver's full retry schedule (tens of seconds). Eight tcp and http checks on host names feed
one gate; a healthy log check feeds another.

Asserted: the name server did receive the agent's queries (the lookups really were made and
really hung); the DNS checks time out on every probe; the log check's probes never fail (none
times out) while more hung lookups are in flight than the event loop's default executor has
threads; the log gate is never written False; SIGTERM still ends the agent within 1 s (the hung
lookups are on the checks' own daemon threads, which nothing joins at exit).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.support import FAST, Record, check_states, finish, metric, wait_check, wait_gate
from tests.harness.agent import AgentProcess
from tests.harness.kube import KubeClient, wait_for
from tests.harness.workloads import PodRef

LOG_GATE = "example.com/log-ready"
DNS_GATE = "example.com/backends-ready"
NAMES = [f"db{i}.legacy.example" for i in range(4)] + [f"web{i}.legacy.example" for i in range(4)]
PROBES = 6  # probes of every DNS check before the verdict


class SilentNameServer:
    """Reads DNS queries on 127.0.0.1:53 (UDP) and never answers; remembers the names asked."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 53))
        self._sock.settimeout(0.1)
        self.names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-dns", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                packet, _ = self._sock.recvfrom(4096)
                self.names.add(_query_name(packet))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _query_name(packet: bytes) -> str:
    """The QNAME of a DNS query, e.g. ``db0.legacy.example.ns.svc.cluster.local``."""
    labels, at = [], 12
    while at < len(packet) and packet[at]:
        length = packet[at]
        labels.append(packet[at + 1 : at + 1 + length].decode(errors="replace"))
        at += 1 + length
    return ".".join(labels)


@pytest.fixture
def name_server() -> Iterator[SilentNameServer]:
    server = SilentNameServer()
    yield server
    server.close()


def _pod_resolv_conf(directory: Path, namespace: str) -> Path:
    conf = directory / "resolv.conf"
    conf.write_text(
        "nameserver 127.0.0.1\n"
        f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 attempts:2\n"
    )
    return conf


def _in_own_mount_namespace(resolv_conf: Path) -> tuple[str, ...]:
    """A command prefix that runs the agent with ``resolv_conf`` as its /etc/resolv.conf (the
    same process: ``unshare`` and ``sh`` exec what follows)."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        str(resolv_conf),
    )


def test_hung_name_lookups_delay_no_other_check_and_never_the_exit(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    name_server: SilentNameServer,
    tmp_path: Path,
    record: Record,
) -> None:
    pod = make_pod(gates=[LOG_GATE, DNS_GATE])
    log = tmp_path / "app.log"  # written by the app after its container started
    log.write_text("Server startup in 1234 ms\n")
    checks: dict[str, str] = {
        "CHECK_LOG_KIND": "log",
        "CHECK_LOG_PATH": str(log),
        "CHECK_LOG_PATTERN": r"Server startup in \d+ ms",
        "CHECK_LOG_GATE": LOG_GATE,
    }
    for i in range(4):
        checks |= {
            f"CHECK_DB{i}_KIND": "tcp",
            f"CHECK_DB{i}_ADDRESS": f"db{i}.legacy.example:5432",
            f"CHECK_DB{i}_GATE": DNS_GATE,
            f"CHECK_WEB{i}_KIND": "http",
            f"CHECK_WEB{i}_URL": f"http://web{i}.legacy.example:8080/health",
            f"CHECK_WEB{i}_GATE": DNS_GATE,
        }
    agent = start_agent(
        pod,
        wrap=_in_own_mount_namespace(_pod_resolv_conf(tmp_path, pod.namespace)),
        **FAST,
        **checks,
    )
    wait_gate(admin, pod, "True", agent, gate=LOG_GATE)
    wait_gate(admin, pod, "False", agent, gate=DNS_GATE, message="timed out after 0.8s")
    dns_checks = [f"DB{i}" for i in range(4)] + [f"WEB{i}" for i in range(4)]

    def probed_enough() -> bool:
        counts = [metric(agent, "readiness_gate_check_results_total", check=c) for c in dns_checks]
        return min(counts) >= PROBES

    wait_for(
        f"{PROBES} probes of every DNS check", probed_enough, timeout=60, describe=agent.describe
    )
    for name in NAMES:  # the agent really asked, and got no answer
        assert any(asked.startswith(name) for asked in name_server.names), (name, name_server.names)
    for check in dns_checks:
        wait_check(agent, check, state="not_ready", detail="timed out")

    log_probes = metric(agent, "readiness_gate_check_results_total", check="LOG")
    log_failures = metric(
        agent, "readiness_gate_check_results_total", check="LOG", result="failure"
    )
    record("log_probes_while_lookups_hang", log_probes, "")
    record("log_probes_failed", log_failures, "")
    assert log_probes >= PROBES - 1
    assert log_failures == 0, agent.describe()
    assert check_states(agent, "LOG") == ["ready"]
    written = [e["status"] for e in agent.events("gate_written") if e["condition_type"] == LOG_GATE]
    assert "True" in written
    assert written[written.index("True") :] == ["True"], written  # never False after True
    finish(agent, record)
