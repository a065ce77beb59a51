"""The agent's own Pod is deleted under it (force-deleted: the object is gone, the agent runs on).

README: "404 (Pod deleted) or a UID mismatch (Pod replaced) stops the writer; checks and endpoints
keep running until the container is stopped." What the agent sees depends on its token:

- A token that outlives the Pod (a kubeconfig, a legacy token, or any token not bound to the
  Pod; here an unbound token of a ServiceAccount the admission policy does not restrict, as on a
  cluster without it): the API server answers 404. The agent logs ``api_pod_gone`` once, stops
  writing for good (no request at all afterwards, even when its checks flip: the audit log shows
  none), keeps serving its endpoints and exits cleanly on SIGTERM.
- The default token, bound to the Pod: the API server invalidates it together with the Pod. Once
  its token cache has expired (10 s after it last validated the token) the answer is 401, not
  404. The agent cannot tell that from a rotated token: it logs ``api_unauthorized`` once and
  keeps retrying at most every 16 s (the backoff cap) until the kubelet stops it; it keeps serving
  its endpoints and exits cleanly on SIGTERM. (Within those 10 s the answer is still 404.)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tests.faults.support import (
    BACKOFF_CAP,
    FAST,
    Audit,
    Record,
    api_events,
    finish,
    pod_status_requests,
    wait_check,
    wait_gate,
)
from tests.harness.agent import AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import ApiError, KubeClient, wait_for
from tests.harness.tokens import request_token, write_token_dir
from tests.harness.workloads import PodRef, create_agent_rbac

TOKEN_CACHE = 10.0  # kube-apiserver caches a successful token authentication for 10 s
UNRESTRICTED_SA = "gate-writer"  # not matched by the shipped ValidatingAdmissionPolicy


def _delete_now(admin: KubeClient, pod: PodRef) -> None:
    admin.delete(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}", gracePeriodSeconds="0")

    def gone() -> bool:
        try:
            admin.pod(pod.namespace, pod.name)
        except ApiError as err:
            return err.status == 404
        return False

    wait_for("the Pod gone", gone)


def _requests(plane: ControlPlane, pod: PodRef, code: int, count: int) -> list[Audit] | None:
    found = [a for a in pod_status_requests(plane, pod) if a.code == code]
    return found if len(found) >= count else None


def _assert_serving(agent: AgentProcess) -> None:
    for path in ("/healthz", "/status", "/metrics", "/gate", "/readyz"):
        code, _ = agent.get(path)
        assert code in (200, 503), (path, code)
    assert agent.get("/healthz")[0] == 200


def test_pod_deleted_404_stops_the_writer_for_good(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    namespace: str,
    tmp_path: Path,
    record: Record,
) -> None:
    create_agent_rbac(admin, namespace, UNRESTRICTED_SA)
    marker = tmp_path / "ready"
    marker.touch()
    pod = make_pod(service_account=UNRESTRICTED_SA)
    token = request_token(admin, namespace, UNRESTRICTED_SA, pod=None)
    token_dir = write_token_dir(
        tmp_path / "sa", token=token, ca_file=control_plane.pki.ca_cert, namespace=namespace
    ).path
    agent = start_agent(
        pod, token_dir=token_dir, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST
    )
    wait_gate(admin, pod, "True", agent)

    _delete_now(admin, pod)
    marker.unlink()  # the agent wants to write False ...
    agent.wait_for_log("api_pod_gone", timeout=10)
    for _ in range(3):  # ... and its checks go on flipping
        time.sleep(1)
        marker.touch()
        time.sleep(1)
        marker.unlink()
    wait_check(agent, "APP", state="not_ready", timeout=5)  # the checks still run
    _assert_serving(agent)
    status = agent.status()["api"]
    assert status["health"] == "pod_gone"

    time.sleep(2)  # the audit log is written in batches, at most 1 s apart
    gone = wait_for("the 404 in the audit log", lambda: _requests(control_plane, pod, 404, 1))
    assert len(gone) == 1, gone  # one attempt, then nothing
    after = [a for a in pod_status_requests(control_plane, pod) if a.received > gone[0].received]
    assert after == [], after
    assert api_events(agent) == ["api_pod_gone"]
    finish(agent, record)


def test_pod_deleted_with_its_bound_token_the_agent_backs_off_on_401(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    marker.touch()
    pod = make_pod()
    agent = start_agent(pod, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST)
    wait_gate(admin, pod, "True", agent)

    _delete_now(admin, pod)
    time.sleep(TOKEN_CACHE + 1)  # the API server no longer remembers the token as valid
    marker.unlink()
    agent.wait_for_log("api_unauthorized", timeout=10)
    time.sleep(8)
    _assert_serving(agent)
    assert agent.status()["api"]["health"] == "unauthorized"
    rejected = wait_for("the 401s in the audit log", lambda: _requests(control_plane, pod, 401, 4))
    times = [datetime.fromisoformat(a.received).timestamp() for a in rejected]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    record("requests_401_in_8s_after_pod_deletion", len(rejected), "")
    # 401: one immediate retry with the re-read token, then the backoff, 0.5 s doubling: the
    # shortest gaps are 0, 0.25, 0.5, 1, 2, 4 s, so at most 7 requests fit in 8 s.
    assert len(rejected) <= 7, gaps
    assert all(gap <= BACKOFF_CAP + 1 for gap in gaps), gaps
    assert api_events(agent) == ["api_unauthorized"]
    finish(agent, record)
