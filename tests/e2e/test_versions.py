"""What differs between Kubernetes versions, checked on the version the session runs.

Run against every pinned version by ``make matrix`` (``--kube-version``). The shipped policy must
compile on the oldest supported API server, so it avoids every CEL library that server refuses
for a new expression; ``CEL_FEATURES`` lists those libraries with the first version that accepts
them, and each is tried here so that docs/security.md states what the servers really do.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.kube import JSON, ApiError, KubeClient, condition, condition_status, wait_for
from tests.harness.workloads import pod_manifest, unique_name

pytestmark = pytest.mark.all_versions

POLICIES = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"

# (CEL library, an expression that needs it, first minor version whose API server accepts it in a
# new expression). A server compiles new expressions against the libraries of its own version
# minus one (k8s.io/apiserver pkg/cel/environment/base.go, DefaultCompatibilityVersion; 1.30 is
# fixed at 1.29), stored ones against everything it knows.
CEL_FEATURES = [
    ("optional types", "optional.of(1).hasValue()", 29),
    ("strings v2: join", "['a', 'b'].join(',') == 'a,b'", 30),
    ("sets", "sets.contains(['a', 'b'], ['a'])", 30),
    ("ip and cidr", "ip('10.0.0.1').family() == 4", 31),
    ("format", "!format.dns1123Label().validate('ok').hasValue()", 32),
    ("two-variable comprehensions", "{'a': 1}.all(k, v, v > 0)", 33),
    ("semver", "semver('1.2.3').isGreaterThan(semver('1.2.2'))", 34),
    ("lists v3: distinct, sort", "[2, 1, 1].distinct().sort() == [1, 2]", 35),
]


def server_minor(admin: KubeClient) -> int:
    version = admin.get("/version")
    return int(re.match(r"\d+", version["minor"])[0])  # type: ignore[index]


def test_every_component_runs_the_pinned_release(control_plane: ControlPlane) -> None:
    """Not only the API server: the hollow kubelet (what it does with readiness gates and native
    sidecars is its own version's behaviour), kube-controller-manager and kubectl too."""
    release = control_plane.binaries.version
    admin = control_plane.admin
    assert admin.get("/version")["gitVersion"] == release
    node = admin.get(f"/api/v1/nodes/{NODE_NAME}")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == release
    kubectl = json.loads(control_plane.kubectl("version", "--client", "-o", "json").stdout)
    assert kubectl["clientVersion"]["gitVersion"] == release
    kcm_log = control_plane.components["kube-controller-manager"].log.read_text()
    assert f'"Starting" version="{release}"' in kcm_log


@pytest.mark.parametrize(
    ("expression", "since"),
    [(e, s) for _, e, s in CEL_FEATURES],
    ids=[f for f, _, _ in CEL_FEATURES],
)
def test_cel_libraries_are_accepted_from_their_documented_version(
    admin: KubeClient, expression: str, since: int
) -> None:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": unique_name("cel-probe")},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                     "resources": ["pods/status"]}
                ]
            },
            "validations": [{"expression": expression}],
        },
    }  # fmt: skip

    def create() -> JSON:
        return admin.request("POST", POLICIES, policy, query={"dryRun": "All"})

    if server_minor(admin) >= since:
        create()
        return
    with pytest.raises(ApiError) as refused:
        create()
    assert refused.value.status == 422, refused.value
    assert "compilation failed" in refused.value.message, refused.value.message


def _pod_with_init_container(name: str, restart_policy: str | None) -> JSON:
    pod = pod_manifest(name)
    init: JSON = {"name": "readiness-gate", "image": "registry.k8s.io/pause:3.10"}
    if restart_policy:
        init["restartPolicy"] = restart_policy
    pod["spec"]["initContainers"] = [init]
    return pod


def test_native_sidecar_is_kept_by_the_api_server_and_run_beside_the_app_by_the_kubelet(
    admin: KubeClient, namespace: str
) -> None:
    """SidecarContainers is on by default from 1.29. The server keeps ``restartPolicy: Always`` on
    an init container (with the gate off it drops the field); the kubelet starts the app while
    that init container runs on, and counts it in ContainersReady. A regular init container that
    never exits holds the app back: the control, on the same node."""
    pods = f"/api/v1/namespaces/{namespace}/pods"
    sidecar, regular = unique_name("native"), unique_name("init")
    created = admin.post(pods, _pod_with_init_container(sidecar, "Always"))
    assert created["spec"]["initContainers"][0]["restartPolicy"] == "Always"
    admin.post(pods, _pod_with_init_container(regular, None))

    def running(name: str) -> JSON | None:
        pod = admin.pod(namespace, name)
        statuses = pod["status"].get("initContainerStatuses", [])
        statuses += pod["status"].get("containerStatuses", [])
        return pod if all("running" in s["state"] for s in statuses) and statuses else None

    pod = wait_for(
        "the sidecar and the app container to run side by side", lambda: running(sidecar)
    )
    assert [s["name"] for s in pod["status"]["containerStatuses"]] == ["app"]
    assert condition_status(pod, "Initialized") == "True"
    # The hollow kubelet's fake prober never reports an init container ready, so this stays False
    # here; it names the sidecar because the kubelet counts native sidecars in ContainersReady.
    containers_ready = condition(pod, "ContainersReady")
    assert containers_ready is not None
    assert "[readiness-gate]" in containers_ready.get("message", ""), containers_ready

    held = wait_for(
        "the regular init container to run",
        lambda: (p := admin.pod(namespace, regular))["status"].get("initContainerStatuses") and p,
    )
    assert condition_status(held, "Initialized") == "False"
    assert held["status"]["phase"] == "Pending"
    for status in held["status"].get("containerStatuses", []):
        assert "running" not in status["state"], status
