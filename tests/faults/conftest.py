"""Fixtures of the fault-injection suite: the agent with a chosen API endpoint, the fault proxy,
the log writer process and an agent following its file, and a record of measured numbers printed
at the end of the run.

The control plane and the Pod fixtures (``control_plane``, ``admin``, ``namespace``, ``make_pod``,
``start_agent``) come from ``tests/conftest.py``: one control plane per session, shared with the
end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.followed import Followed, start_following
from tests.faults.proxy import FaultProxy
from tests.faults.support import Record
from tests.faults.writer import LogWriter
from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import KubeClient
from tests.harness.pki import ClientCert
from tests.harness.workloads import PodRef

_MEASURED = pytest.StashKey[list[tuple[str, str, float, str]]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/faults/" not in str(item.path):
            continue
        item.add_marker(pytest.mark.faults)
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """``record(name, value, unit)``: a measured number, listed in the run's terminal summary."""
    rows = request.config.stash.setdefault(_MEASURED, [])
    test = request.node.name

    def add(name: str, value: float, unit: str = "") -> None:
        rows.append((test, name, value, unit))

    return add


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rows = config.stash.get(_MEASURED, [])
    if not rows:
        return
    terminalreporter.section("fault measurements")
    for test, name, value, unit in rows:
        terminalreporter.write_line(f"{test:<78} {name:<34} {value:10.3f} {unit}")


@pytest.fixture(scope="session")
def proxy_cert(control_plane: ControlPlane) -> ClientCert:
    """A serving certificate for 127.0.0.1 from the cluster CA, which the agent trusts."""
    return control_plane.pki.issue("fault-proxy", "/CN=fault-proxy", server_sans="IP:127.0.0.1")


@pytest.fixture
def fault_proxy(control_plane: ControlPlane, proxy_cert: ClientCert) -> Iterator[FaultProxy]:
    with FaultProxy(proxy_cert, control_plane.pki.ca_cert) as proxy:
        yield proxy


@pytest.fixture
def log_writer() -> Iterator[Callable[[Path], LogWriter]]:
    """Start writer processes (``tests/faults/writer.py``) on log files; closed afterwards."""
    writers: list[LogWriter] = []

    def start(path: Path) -> LogWriter:
        writer = LogWriter(path)
        writers.append(writer)
        return writer

    yield start
    for writer in writers:
        writer.close()


@pytest.fixture
def follow(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    log_writer: Callable[[Path], LogWriter],
    tmp_path: Path,
) -> Callable[..., Followed]:
    """``follow(initial=..., path=..., **env)``: a Pod, a writer on ``path`` (default
    ``<tmp>/logs/app.log``) and the agent with one log check on it (``faults/followed.py``)."""

    def start(path: Path | None = None, **options: Any) -> Followed:
        target = path or tmp_path / "logs" / "app.log"
        return start_following(admin, make_pod, start_agent, log_writer, target, **options)

    return start
