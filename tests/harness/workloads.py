"""Namespaces, Pods, Services and RBAC for end-to-end tests, created through the real API."""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.kube import (
    JSON,
    STRATEGIC,
    ApiError,
    KubeClient,
    condition,
    condition_status,
    wait_for,
)
from tests.harness.tokens import request_token

if TYPE_CHECKING:  # agent.py imports this module
    from tests.harness.agent import AgentProcess

GATE = "example.com/legacy-ready"
RBAC_DIR = Path(__file__).resolve().parents[2] / "examples" / "rbac"
AGENT_RBAC_MANIFEST = RBAC_DIR / "agent-rbac.yaml"
POD_LOGS_RBAC_MANIFEST = AGENT_RBAC_MANIFEST.with_name("pod-logs-rbac.yaml")
POLICY_MANIFEST = RBAC_DIR / "validating-admission-policy.yaml"
# The ServiceAccount name the shipped manifests use, and that the admission policy recognises.
AGENT_SA = "readiness-gate-sidecar"
POLICY_NAME = "readiness-gate-sidecar.example.com"
# kind -> (API group, version, plural) for what the shipped manifests contain.
_RESOURCES = {
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "ValidatingAdmissionPolicy": (
        "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies"
    ),
    "ValidatingAdmissionPolicyBinding": (
        "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings"
    ),
}  # fmt: skip
_counter = itertools.count()


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]


def unique_name(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def create_namespace(plane: ControlPlane, name: str | None = None) -> str:
    name = name or unique_name("t")
    plane.admin.post("/api/v1/namespaces", {"metadata": {"name": name}})
    plane.wait_for_namespace_ready(name)
    return name


def delete_namespace(plane: ControlPlane, name: str) -> None:
    try:
        plane.admin.delete(f"/api/v1/namespaces/{name}")
    except ApiError as err:
        if err.status != 404:
            raise


def pod_manifest(
    name: str,
    *,
    gates: Iterable[str] = (GATE,),
    labels: Mapping[str, str] | None = None,
    service_account: str = "default",
) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": {
            "nodeName": NODE_NAME,
            "serviceAccountName": service_account,
            "readinessGates": [{"conditionType": g} for g in gates],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                }
            ],
        },
    }


def create_pod(
    client: KubeClient,
    namespace: str,
    name: str | None = None,
    *,
    gates: Iterable[str] = (GATE,),
    labels: Mapping[str, str] | None = None,
    service_account: str = "default",
    wait_running: bool = True,
) -> PodRef:
    name = name or unique_name("pod")
    manifest = pod_manifest(name, gates=gates, labels=labels, service_account=service_account)
    created = client.post(f"/api/v1/namespaces/{namespace}/pods", manifest)
    ref = PodRef(
        namespace=namespace,
        name=name,
        uid=created["metadata"]["uid"],
        labels=created["metadata"]["labels"],
    )
    if wait_running:
        wait_for(
            f"pod {namespace}/{name} to run with ContainersReady",
            lambda: containers_running(client.pod(namespace, name)),
            timeout=60,
        )
    return ref


def containers_running(pod: JSON) -> bool:
    """The kubelet's status write that starts the containers is done.

    The hollow kubelet reports ContainersReady True one status write before phase Running and
    the containers' running state (0.3-0.7 s apart, on 1.30 to 1.37): a test that compares
    resourceVersions must not start between the two.
    """
    status = pod.get("status", {})
    containers = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and condition_status(pod, "ContainersReady") == "True"
        and bool(containers)
        and all("running" in c.get("state", {}) for c in containers)
    )


def create_service(
    client: KubeClient, namespace: str, name: str, selector: Mapping[str, str]
) -> None:
    client.post(
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": name},
            "spec": {"selector": dict(selector), "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )


def endpoint_ready(client: KubeClient, namespace: str, service: str, pod: str) -> bool | None:
    """The ready flag of ``pod``'s endpoint in ``service``'s EndpointSlices (None: not listed)."""
    slices = client.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        labelSelector=f"kubernetes.io/service-name={service}",
    )
    for item in slices.get("items", []):
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("targetRef") or {}).get("name") == pod:
                return bool((endpoint.get("conditions") or {}).get("ready"))
    return None


def rbac_manifests() -> list[JSON]:
    """The shipped namespaced manifests (examples/rbac/agent-rbac.yaml), in file order."""
    return _load_yaml(AGENT_RBAC_MANIFEST)


def policy_manifests() -> list[JSON]:
    """The shipped ValidatingAdmissionPolicy and its binding (cluster-scoped)."""
    return _load_yaml(POLICY_MANIFEST)


def _load_yaml(path: Path) -> list[JSON]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _collection(kind: str, namespace: str | None = None) -> str:
    group, version, plural = _RESOURCES[kind]
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def _renamed(manifest: JSON, name: str) -> JSON:
    """Rename every object of the agent's RBAC (and the references between them) to ``name``."""
    renamed = copy.deepcopy(manifest)
    renamed["metadata"]["name"] = name
    if "roleRef" in renamed:
        renamed["roleRef"]["name"] = name
    for subject in renamed.get("subjects") or []:
        subject["name"] = name
    return renamed


def create_agent_rbac(client: KubeClient, namespace: str, name: str = AGENT_SA) -> None:
    """Apply examples/rbac/agent-rbac.yaml in ``namespace`` as `kubectl apply -n` would.

    Only ``metadata.namespace`` is set; the RoleBinding's subject keeps its implicit namespace, so
    this also proves the shipped file works as documented. With another ``name`` every object is
    renamed consistently (a ServiceAccount that the admission policy does not recognise).
    """
    for manifest in rbac_manifests():
        body = _renamed(manifest, name) if name != AGENT_SA else copy.deepcopy(manifest)
        assert "namespace" not in body["metadata"], "shipped RBAC manifests must be namespace-free"
        body["metadata"]["namespace"] = namespace
        client.post(_collection(body["kind"], namespace), body)


def create_pod_logs_rbac(client: KubeClient, namespace: str) -> None:
    """Apply examples/rbac/pod-logs-rbac.yaml (get pods/log for the agent) in ``namespace``."""
    for manifest in _load_yaml(POD_LOGS_RBAC_MANIFEST):
        assert "namespace" not in manifest["metadata"], (
            "shipped RBAC manifests must be namespace-free"
        )
        manifest["metadata"]["namespace"] = namespace
        client.post(_collection(manifest["kind"], namespace), manifest)


def install_admission_policy(plane: ControlPlane, *, timeout: float = 30) -> None:
    """Create or update the shipped policy and binding; return once the API server enforces them.

    Idempotent: a second call (or a policy left from an earlier call) updates the objects in place.
    Enforcement starts asynchronously (the admission plugin watches policies), so this waits until a
    request that the policy must deny is denied: a dry-run status patch by the agent's
    ServiceAccount with a token not bound to any Pod, in a scratch namespace. (After an update,
    the previous version may still be what denies it, for a moment.)
    """
    client = plane.admin
    for manifest in policy_manifests():
        path = _collection(manifest["kind"])
        name = manifest["metadata"]["name"]
        try:
            current = client.get(f"{path}/{name}")
        except ApiError as err:
            if err.status != 404:
                raise
            client.post(path, manifest)
            continue
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        client.put(f"{path}/{name}", body)
    _wait_until_policy_enforced(plane, timeout)


def _wait_until_policy_enforced(plane: ControlPlane, timeout: float) -> None:
    client = plane.admin
    namespace = create_namespace(plane, unique_name("policy-probe"))
    try:
        create_agent_rbac(client, namespace)
        probe = pod_manifest("probe", service_account=AGENT_SA)
        del probe["spec"]["nodeName"]  # no scheduler runs: the Pod stays Pending, untouched
        client.post(f"/api/v1/namespaces/{namespace}/pods", probe)
        token = request_token(client, namespace, AGENT_SA, pod=None, seconds=600)
        agent = client.with_token(token, plane.pki.ca_cert)
        path = f"/api/v1/namespaces/{namespace}/pods/probe/status"
        patch = {"status": {"conditions": [{"type": GATE, "status": "True"}]}}
        last = ["no answer yet"]

        def denied() -> bool:
            try:
                agent.request("PATCH", path, patch, content_type=STRATEGIC, query={"dryRun": "All"})
            except ApiError as err:
                if err.status == 403 and POLICY_NAME in err.message:
                    return True
                if err.status != 403:  # 403 from RBAC: the new RoleBinding is not seen yet
                    raise
                last[0] = err.message
            else:
                last[0] = "the dry-run patch was allowed"
            return False

        wait_for(
            f"the API server to enforce {POLICY_NAME}",
            denied,
            timeout=timeout,
            interval=0.2,
            describe=lambda: f"last answer: {last[0]}",
        )
    finally:
        delete_namespace(plane, namespace)


# --- waiting on the real Pod ----------------------------------------------------------------


def gate_condition(admin: KubeClient, pod: PodRef, gate: str = GATE) -> JSON | None:
    return condition(admin.pod(pod.namespace, pod.name), gate)


def wait_gate(
    admin: KubeClient,
    pod: PodRef,
    status: str,
    agent: AgentProcess | None = None,
    *,
    reason: str | None = None,
    message: str | None = None,
    gate: str = GATE,
    timeout: float = 30,
) -> JSON:
    """Wait until the Pod's gate condition has ``status`` (and ``reason``, a ``message`` part)."""

    def probe() -> JSON | None:
        cond = gate_condition(admin, pod, gate)
        if cond is None or cond.get("status") != status:
            return None
        if reason is not None and cond.get("reason") != reason:
            return None
        if message is not None and message not in str(cond.get("message")):
            return None
        return cond

    what = (
        f"{gate} {status}"
        + (f" ({reason})" if reason else "")
        + (f" [{message}]" if message else "")
    )
    return wait_for(
        what, probe, timeout=timeout, interval=0.05, describe=agent.describe if agent else None
    )


def wait_ready(admin: KubeClient, pod: PodRef, status: str, *, timeout: float = 30) -> None:
    """Wait until the kubelet-computed ``Ready`` condition of ``pod`` has ``status``."""
    wait_for(
        f"{pod.name}: Ready {status}",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == status,
        timeout=timeout,
    )
