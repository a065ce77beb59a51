"""Fixtures for end-to-end tests against the real local control plane (never a mock)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.kube import KubeClient
from tests.harness.workloads import create_namespace, delete_namespace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """One control plane for the whole session; built on first use, with visible progress."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    stack = contextlib.ExitStack()
    with capture.global_and_fixture_disabled():
        plane = stack.enter_context(ControlPlane.started(log=sys.stderr))
    with stack:
        yield plane


@pytest.fixture
def admin(control_plane: ControlPlane) -> KubeClient:
    return control_plane.admin


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = create_namespace(control_plane)
    yield name
    delete_namespace(control_plane, name)
