"""The agent's own Pod is deleted under it (force-deleted: the object is gone, the agent runs on).

README: "The watch of its own Pod shows the deletion (or a 404 / a UID mismatch answers a write):
the agent stops all API requests; checks and endpoints keep running until the container is
stopped." Whatever its token, the watch reports the deletion at once, before any write:

- A token that outlives the Pod (a kubeconfig, a legacy token, or any token not bound to the
  Pod; here an unbound token of a ServiceAccount the admission policy does not restrict, as on a
  cluster without it): the agent logs ``api_pod_gone`` once and sends no request afterwards,
  even when its checks flip (the audit log shows none); it keeps serving its endpoints and exits
  cleanly on SIGTERM.
- The default token, bound to the Pod, which the API server invalidates together with the Pod
  (401 once its token cache expired, 10 s later): the same, the agent never gets to use the dead
  token. (Had it missed the deletion, e.g. with its watch down at that moment, it would see 401s,
  which it cannot tell from a rotated token: ``api_unauthorized`` once, then a retry at most
  every 16 s.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tests.faults.support import (
    FAST,
    Record,
    api_events,
    audit_log,
    finish,
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
    pod = make_pod(service_account=UNRESTRICTED_SA)
    marker.touch()  # after the container started (older evidence does not count)
    token = request_token(admin, namespace, UNRESTRICTED_SA, pod=None)
    token_dir = write_token_dir(
        tmp_path / "sa", token=token, ca_file=control_plane.pki.ca_cert, namespace=namespace
    ).path
    agent = start_agent(
        pod, token_dir=token_dir, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST
    )
    wait_gate(admin, pod, "True", agent)

    _assert_stops_for_good(control_plane, admin, pod, agent, marker, record)


def _assert_stops_for_good(
    plane: ControlPlane,
    admin: KubeClient,
    pod: PodRef,
    agent: AgentProcess,
    marker: Path,
    record: Record,
) -> None:
    """Delete the Pod: the watch tells the agent, which then sends nothing, whatever its checks."""
    user = f"system:serviceaccount:{pod.namespace}:"
    _delete_now(admin, pod)
    deleted = time.monotonic()
    gone = agent.wait_for_log("api_pod_gone", timeout=10)
    knew = datetime.fromisoformat(gone["timestamp"])
    record("pod_deleted_to_agent_knows", time.monotonic() - deleted, "s")
    assert f"pod {pod.namespace}/{pod.name} was deleted" in gone["error"]
    marker.unlink()  # the agent would write False ...
    for _ in range(3):  # ... and its checks go on flipping
        time.sleep(1)
        marker.touch()
        time.sleep(1)
        marker.unlink()
    wait_check(agent, "APP", state="not_ready", timeout=5)  # the checks still run
    _assert_serving(agent)
    assert agent.status()["api"]["health"] == "pod_gone"
    assert agent.get("/readyz")[0] == 503  # it no longer writes: not ready

    time.sleep(TOKEN_CACHE + 2)  # a bound token would be rejected by now; batched audit log
    later = [
        a
        for a in audit_log(plane)
        if a.user.startswith(user) and datetime.fromisoformat(a.received) > knew
    ]
    # Not one request once the agent knew: no read, watch, write or Event. (One sent before, e.g.
    # the Event of the last write, may still reach the server after the deletion.)
    assert later == [], later
    assert api_events(agent) == ["api_pod_gone"]
    finish(agent, record)


def test_pod_deleted_with_its_bound_token_the_agent_stops_before_the_token_dies(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    record: Record,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    marker.touch()
    agent = start_agent(pod, CHECK_APP_KIND="file", CHECK_APP_PATH=str(marker), **FAST)
    wait_gate(admin, pod, "True", agent)

    _assert_stops_for_good(control_plane, admin, pod, agent, marker, record)
