"""The real-node tier: the agent and real legacy apps in real containers under a real kubelet.

One real node per session (``real_node``), next to the session's control plane; it is built and
its images are imported on first use, with visible progress. Every test here is marked
``realnode`` (``pytest -m realnode`` runs only this tier, ``-m "not realnode"`` skips it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.helm import Installer
from tests.harness.node import RealNode
from tests.harness.workloads import create_namespace, delete_namespace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/node/" in str(item.path):
            item.add_marker(pytest.mark.realnode)


@pytest.fixture(scope="session")
def real_node(pytestconfig: pytest.Config, control_plane: ControlPlane) -> Iterator[RealNode]:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        context = RealNode.started(control_plane, log=sys.stderr)
        node = context.__enter__()
    try:
        yield node
    finally:
        with capture.global_and_fixture_disabled():
            context.__exit__(None, None, None)


@pytest.fixture
def chart_namespace(control_plane: ControlPlane) -> Iterator[tuple[str, Installer]]:
    """A namespace for one test's chart release, removed with what the installer applied."""
    namespace = create_namespace(control_plane)
    installer = Installer(control_plane)
    yield namespace, installer
    delete_namespace(control_plane, namespace)
    installer.cleanup()
