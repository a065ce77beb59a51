"""Fixtures shared by every test directory.

- Test hygiene: no task may outlive the test that started it.
- The real local control plane and what end-to-end and fault tests build on it (one control plane
  per pytest session, shared by ``tests/e2e`` and ``tests/faults``; never a mock).
- ``--kube-version=1.30`` (or ``oldest``) runs the session against another pinned Kubernetes
  version (tests/harness/k8s/); the default is the newest. Tests marked ``all_versions`` are the
  ones every supported version must pass: ``make test`` runs them on the oldest too, ``make
  matrix`` on every version.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import versions
from tests.harness.agent import AgentProcess, agent_env, bound_token_dir
from tests.harness.binaries import ensure_helm
from tests.harness.cluster import APISERVER_PORT, ControlPlane
from tests.harness.helm import Helm
from tests.harness.kube import KubeClient
from tests.harness.workloads import (
    AGENT_SA,
    PodRef,
    create_agent_rbac,
    create_namespace,
    create_pod,
    delete_namespace,
    install_admission_policy,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kube-version",
        default=None,
        metavar="VERSION",
        help="the pinned Kubernetes version to run against (1.30, v1.30.14, oldest, newest; "
        "see tests/harness/k8s/); default: the newest",
    )


def kube_version(config: pytest.Config) -> versions.KubeVersion:
    try:
        return versions.resolve(config.getoption("kube_version"))
    except versions.VersionError as err:
        raise pytest.UsageError(str(err)) from None


def pytest_configure(config: pytest.Config) -> None:
    kube_version(config)  # a version that is not pinned fails the session before collection


def pytest_report_header(config: pytest.Config) -> str:
    version = kube_version(config)
    return f"kubernetes: {version.release} ({version.gomod_dir})"


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    yield
    me = asyncio.current_task()
    for _ in range(3):  # let tasks that are finishing run their last step
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in leaked:
        task.cancel()
    if leaked:
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test leaked {len(leaked)} task(s): {[t.get_coro() for t in leaked]}")


@pytest.fixture(scope="session")
def control_plane(pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """One control plane for the whole session; built on first use, with visible progress.

    The shipped ValidatingAdmissionPolicy (examples/rbac/) is installed before any test runs, so
    every end-to-end test also proves that the agent's writes pass it.
    """
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with contextlib.ExitStack() as stack:
        with capture.global_and_fixture_disabled():
            version = kube_version(pytestconfig).release
            plane = stack.enter_context(ControlPlane.started(log=sys.stderr, version=version))
            install_admission_policy(plane)
        yield plane


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm, built on first use with visible progress, like the control plane's binaries."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        binaries = ensure_helm(sys.stderr)
    return Helm(binaries.path("helm"), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture
def admin(control_plane: ControlPlane) -> KubeClient:
    return control_plane.admin


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = create_namespace(control_plane)
    yield name
    delete_namespace(control_plane, name)


@pytest.fixture
def agent_rbac(admin: KubeClient, namespace: str) -> str:
    """The agent's ServiceAccount with its namespaced Role; returns the ServiceAccount name."""
    create_agent_rbac(admin, namespace)
    return AGENT_SA


@pytest.fixture
def make_pod(admin: KubeClient, namespace: str, agent_rbac: str) -> Callable[..., PodRef]:
    """Create a Pod with readiness gates on the hollow node, running as the agent's account."""

    def make(**kwargs: Any) -> PodRef:
        kwargs.setdefault("service_account", agent_rbac)
        return create_pod(admin, namespace, **kwargs)

    return make


@pytest.fixture
def start_agent(
    control_plane: ControlPlane, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Start the agent as a subprocess for a Pod, with that Pod's bound token and environment.

    Without ``token_dir`` the agent gets a fresh token bound to the Pod, as the kubelet mounts it
    (``token=False``: none at all). ``api_port`` points it elsewhere, e.g. at a fault proxy;
    ``wrap`` runs it through a command that execs it (``AgentProcess``).
    Agents still running at the end of the test are killed.
    """
    started: list[AgentProcess] = []

    def start(
        pod: PodRef | None,
        *,
        token: bool = True,
        token_dir: Path | None = None,
        api_port: int = APISERVER_PORT,
        wrap: tuple[str, ...] = (),
        **env: str,
    ) -> AgentProcess:
        if token_dir is None and pod is not None and token:
            token_dir = bound_token_dir(control_plane, pod, tmp_path / f"sa-{len(started)}").path
        agent = AgentProcess(agent_env(pod, token_dir, env, api_port=api_port), wrap=wrap)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.returncode is None:
            agent.kill()
