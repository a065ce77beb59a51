"""Namespaces, Pods, Services and RBAC for end-to-end tests, created through the real API."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.kube import JSON, ApiError, KubeClient, condition_status, wait_for

GATE = "example.com/legacy-ready"
AGENT_SA = "gate-agent"
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
            lambda: condition_status(client.pod(namespace, name), "ContainersReady") == "True",
            timeout=60,
        )
    return ref


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


def create_agent_rbac(client: KubeClient, namespace: str, name: str = AGENT_SA) -> None:
    """The agent's namespaced grant, as documented: read pods, patch pods/status, write events."""
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
    client.post(
        f"{base}/roles",
        {
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                 "verbs": ["create", "patch"]},
            ],
        },
    )  # fmt: skip
    client.post(
        f"{base}/rolebindings",
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
