"""The ServiceAccount token is rotated under a running agent, and the old one stops working.

The token directory is updated the way the kubelet updates a projected volume (a new hidden
directory, then an atomic swap of the ``..data`` symlink). To make the old token stop working at
once, the ServiceAccount is deleted and recreated: every token of the old ServiceAccount (its UID
is in the token) is rejected from then on, with 401. A new token, bound to the same Pod and issued
for the new ServiceAccount, is projected into the directory. The agent must carry on without a
restart: re-read the token (README: "re-read whenever the file changes ... and after a 401"),
write the transition that happened meanwhile, and the next one, logging the 401 once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.support import (
    BACKOFF_CAP,
    FAST,
    Audit,
    Record,
    api_events,
    finish,
    gate_condition,
    pod_status_requests,
    project_files,
    token_id,
    wait_gate,
)
from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import ApiError, KubeClient, wait_for
from tests.harness.tokens import request_token
from tests.harness.workloads import AGENT_SA, PodRef


def _project_token(plane: ControlPlane, pod: PodRef, directory: Path) -> str:
    token = request_token(plane.admin, pod.namespace, AGENT_SA, pod=(pod.name, pod.uid))
    project_files(
        directory,
        {
            "token": token.encode(),
            "ca.crt": plane.pki.ca_cert.read_bytes(),
            "namespace": pod.namespace.encode(),
        },
    )
    return token


def _rejected(plane: ControlPlane, token: str, pod: PodRef) -> bool:
    try:
        plane.admin.with_token(token, plane.pki.ca_cert).pod(pod.namespace, pod.name)
    except ApiError as err:
        return err.status == 401
    return False


def test_rotated_token_is_picked_up_without_a_restart_after_the_old_one_is_revoked(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    marker.touch()  # after the container started (older evidence does not count)
    token_dir = tmp_path / "serviceaccount"
    old = _project_token(control_plane, pod, token_dir)
    agent = start_agent(
        pod, token_dir=token_dir, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST
    )
    wait_gate(admin, pod, "True", agent)

    # Revoke every token of the ServiceAccount: delete it and create it again (a new UID).
    sa_path = f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{AGENT_SA}"
    admin.delete(sa_path)
    wait_for("the old ServiceAccount gone", lambda: _gone(admin, sa_path))
    admin.post(
        f"/api/v1/namespaces/{pod.namespace}/serviceaccounts", {"metadata": {"name": AGENT_SA}}
    )
    wait_for("the old token rejected", lambda: _rejected(control_plane, old, pod))

    marker.unlink()  # a transition while the agent's token is rejected
    agent.wait_for_log("api_unauthorized", timeout=10)
    time.sleep(2)  # a few rejected retries, backing off
    assert agent.status()["api"]["health"] == "unauthorized"
    held = gate_condition(admin, pod)
    assert held is not None
    assert held["status"] == "True", (held, agent.describe())  # the transition is not written yet
    pid = agent.pid

    rotated = time.monotonic()
    new = _project_token(control_plane, pod, token_dir)
    wait_gate(admin, pod, "False", agent, reason="CheckFailed", timeout=BACKOFF_CAP + 10)
    took = time.monotonic() - rotated
    record("rotation_to_write_seconds", took, "s")
    assert took <= BACKOFF_CAP + 2
    marker.touch()  # the next transition, written with the new token at once
    wait_gate(admin, pod, "True", agent, reason="ChecksPassed", timeout=10)
    assert agent.pid == pid  # no restart
    assert agent.returncode is None

    events = api_events(agent)
    assert events == ["api_unauthorized", "api_recovered"], events
    writes = wait_for(
        "the audit log of the writes",
        lambda: _writes_by(control_plane, pod, token_id(new), 2),
        timeout=10,
    )
    rejected = [a for a in pod_status_requests(control_plane, pod) if a.code == 401]
    record("requests_rejected_401", len(rejected), "")
    assert all(a.code == 200 for a in writes)
    assert [a for a in pod_status_requests(control_plane, pod) if a.credential == token_id(old)]
    finish(agent, record)


def _gone(admin: KubeClient, path: str) -> bool:
    try:
        admin.get(path)
    except ApiError as err:
        return err.status == 404
    return False


def _writes_by(plane: ControlPlane, pod: PodRef, credential: str, count: int) -> list[Audit] | None:
    writes = [a for a in pod_status_requests(plane, pod) if a.credential == credential]
    return writes if len(writes) >= count else None
