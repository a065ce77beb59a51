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
from tests.harness.node import RealNode


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
