"""The harness itself: a bound token flips the gate, the real kubelet and EndpointSlice follow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.kube import (
    ApiError,
    Credentials,
    KubeClient,
    condition,
    condition_status,
    wait_for,
)
from tests.harness.tokens import request_token, write_token_dir
from tests.harness.workloads import (
    AGENT_SA,
    GATE,
    create_agent_rbac,
    create_namespace,
    create_pod,
    create_service,
    delete_namespace,
    endpoint_ready,
)

pytestmark = pytest.mark.all_versions


def _gate(status: str) -> dict[str, object]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "status": {
            "conditions": [
                {"type": GATE, "status": status, "reason": "Test", "lastTransitionTime": now}
            ]
        }
    }


def test_control_plane_runs_every_component_with_real_authorization(
    control_plane: ControlPlane,
) -> None:
    assert all(c.running for c in control_plane.components.values())
    version = control_plane.admin.get("/version")
    assert version["gitVersion"] == control_plane.binaries.version
    anonymous = KubeClient(
        control_plane.admin.server, Credentials(ca_file=control_plane.pki.ca_cert)
    )
    with pytest.raises(ApiError) as denied:
        anonymous.get("/api/v1/namespaces/default/pods")
    assert denied.value.status in (401, 403)


def test_bound_token_flips_gate_and_kubelet_and_endpointslice_follow(
    control_plane: ControlPlane, admin: KubeClient, namespace: str, tmp_path: Path
) -> None:
    create_agent_rbac(admin, namespace)
    pod = create_pod(admin, namespace, service_account=AGENT_SA)
    create_service(admin, namespace, "legacy", {"app": pod.labels["app"]})
    assert condition_status(admin.pod(namespace, pod.name), "Ready") == "False"

    token = request_token(admin, namespace, AGENT_SA, pod=(pod.name, pod.uid))
    token_dir = write_token_dir(
        tmp_path / "sa", token=token, ca_file=control_plane.pki.ca_cert, namespace=namespace
    )
    assert (token_dir.path / "ca.crt").read_bytes() == control_plane.pki.ca_cert.read_bytes()
    agent = admin.with_token(token, token_dir.ca_file)

    wait_for(
        "the endpoint to be listed as not ready",
        lambda: endpoint_ready(admin, namespace, "legacy", pod.name) is False,
    )
    agent.patch_pod_status(namespace, pod.name, _gate("True"))
    live = admin.pod(namespace, pod.name)
    assert condition(live, GATE) is not None
    assert condition_status(live, "ContainersReady") == "True"
    wait_for(
        "Ready True", lambda: condition_status(admin.pod(namespace, pod.name), "Ready") == "True"
    )
    wait_for("endpoint ready", lambda: endpoint_ready(admin, namespace, "legacy", pod.name))

    agent.patch_pod_status(namespace, pod.name, _gate("False"))
    wait_for(
        "Ready False", lambda: condition_status(admin.pod(namespace, pod.name), "Ready") == "False"
    )
    wait_for(
        "endpoint not ready",
        lambda: endpoint_ready(admin, namespace, "legacy", pod.name) is False,
    )


def test_bound_token_is_denied_in_another_namespace(
    control_plane: ControlPlane, admin: KubeClient, namespace: str
) -> None:
    create_agent_rbac(admin, namespace)
    own = create_pod(admin, namespace, service_account=AGENT_SA)
    other_namespace = create_namespace(control_plane)
    try:
        other = create_pod(admin, other_namespace)
        token = request_token(admin, namespace, AGENT_SA, pod=(own.name, own.uid))
        agent = admin.with_token(token, control_plane.pki.ca_cert)
        with pytest.raises(ApiError) as denied:
            agent.patch_pod_status(other_namespace, other.name, _gate("True"))
        assert denied.value.status == 403
        assert "pods/status" in denied.value.message
        assert condition(admin.pod(other_namespace, other.name), GATE) is None
    finally:
        delete_namespace(control_plane, other_namespace)
