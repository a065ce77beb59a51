"""Least privilege: the shipped RBAC plus the shipped ValidatingAdmissionPolicy, with real tokens.

Every request here is made with a real ServiceAccount token minted by the API server (TokenRequest,
bound to a Pod unless a test says otherwise) against the session's control plane, where the
``control_plane`` fixture installed examples/rbac/validating-admission-policy.yaml. The agent's own
write is built with ``sidecar.conditions.status_patch``: byte for byte what the agent sends.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.conditions import Condition, status_patch, timestamp
from tests.harness.agent import STOP_BOUND, AgentProcess
from tests.harness.cluster import ControlPlane
from tests.harness.kube import (
    JSON,
    JSON_PATCH,
    MERGE,
    STRATEGIC,
    ApiError,
    KubeClient,
    condition,
    condition_status,
    wait_for,
)
from tests.harness.tokens import request_token
from tests.harness.workloads import (
    AGENT_SA,
    GATE,
    POLICY_NAME,
    PodRef,
    create_agent_rbac,
    create_namespace,
    create_pod,
    delete_namespace,
    policy_manifests,
    unique_name,
)

OTHER_GATE = "example.com/cache-warm"
# Same Role and RoleBinding as the agent, but a name the policy does not recognise: RBAC alone.
UNMATCHED_SA = "plain-gate-writer"

pytestmark = pytest.mark.all_versions


def agent_patch(pod: PodRef, status: str, condition_type: str = GATE) -> JSON:
    """The agent's write, from the agent's own code (sidecar/conditions.py)."""
    cond = Condition(
        type=condition_type,
        status=status,
        reason="ChecksPassed" if status == "True" else "CheckFailed",
        message=f"test: {condition_type} is {status}",
        last_transition_time=timestamp(time.time()),
    )
    return status_patch([cond], pod.uid)


def token_client(
    plane: ControlPlane, pod: PodRef | None, service_account: str = AGENT_SA, namespace: str = ""
) -> KubeClient:
    """A client holding a fresh token of ``service_account``, bound to ``pod`` (None: unbound)."""
    ns = namespace or (pod.namespace if pod else "")
    bound = (pod.name, pod.uid) if pod else None
    token = request_token(plane.admin, ns, service_account, pod=bound, seconds=3600)
    return plane.admin.with_token(token, plane.pki.ca_cert)


def denied_by_policy(call: Callable[[], object]) -> str:
    """Run ``call``: the admission policy (not RBAC) must refuse it. Return the message."""
    with pytest.raises(ApiError) as denied:
        call()
    err = denied.value
    assert err.status == 403, err
    assert f"ValidatingAdmissionPolicy '{POLICY_NAME}'" in err.message, err.message
    return err.message


def status_path(pod: PodRef) -> str:
    return f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status"


def unchanged(admin: KubeClient, pod: PodRef, before: JSON) -> None:
    after = admin.pod(pod.namespace, pod.name)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


# --- allowed: exactly what the agent does -------------------------------------------------------


def test_agent_token_sets_its_own_gate_true_and_false_and_the_kubelet_follows(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    # create_pod waited for the kubelet to report Running and ContainersReady: status writes by
    # the node's identity pass while the policy is active.
    pod = make_pod()
    live = wait_for(
        "the kubelet to report phase Running",
        lambda: (p := admin.pod(pod.namespace, pod.name))["status"]["phase"] == "Running" and p,
    )
    assert condition_status(live, "ContainersReady") == "True"
    assert condition_status(live, "Ready") == "False"
    agent = token_client(control_plane, pod)

    written = agent.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "True"))
    assert condition_status(written, GATE) == "True"
    wait_for(
        "the kubelet to set Ready True",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == "True",
    )

    written = agent.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "False"))
    gate = condition(written, GATE)
    assert gate is not None
    assert gate["status"] == "False"
    assert gate["reason"] == "CheckFailed"
    wait_for(
        "the kubelet to set Ready False",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == "False",
    )


def test_agent_token_may_write_every_gate_its_pod_declares(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod(gates=(GATE, OTHER_GATE))
    agent = token_client(control_plane, pod)
    both = status_patch(
        [
            Condition(type=GATE, status="True", last_transition_time=timestamp(time.time())),
            Condition(type=OTHER_GATE, status="True", last_transition_time=timestamp(time.time())),
        ],
        pod.uid,
    )
    agent.patch_pod_status(pod.namespace, pod.name, both)
    live = admin.pod(pod.namespace, pod.name)
    assert condition_status(live, GATE) == condition_status(live, OTHER_GATE) == "True"


def test_the_agent_process_reaches_gate_true_under_the_policy(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ready"
    pod = make_pod()
    agent = start_agent(
        pod,
        GATE_CONDITION_TYPE=GATE,
        CHECK_APP_KIND="file",
        CHECK_APP_PATH=str(marker),
        GATE_PERIOD_SECONDS="0.5",
        GATE_TIMEOUT_SECONDS="0.4",
        GATE_ON_SHUTDOWN="false",
    )
    agent.wait_started()
    wait_for(
        "the pending gate",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), GATE) == "False",
        describe=agent.describe,
    )
    marker.write_text("up\n")
    wait_for(
        "gate True",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), GATE) == "True",
        describe=agent.describe,
    )
    wait_for(
        "Ready True",
        lambda: condition_status(admin.pod(pod.namespace, pod.name), "Ready") == "True",
    )
    # Its Event on the transition was allowed by the shipped Role.
    events = admin.get(
        f"/api/v1/namespaces/{pod.namespace}/events",
        fieldSelector=f"involvedObject.name={pod.name}",
    )
    assert "ReadinessGateTrue" in [e.get("reason") for e in events["items"]]
    for refused in ("api_forbidden", "api_rejected", "event_not_created"):
        assert not agent.events(refused), agent.describe()
    # GATE_ON_SHUTDOWN=false: the last write on the way out passes the policy too.
    assert agent.stop() < STOP_BOUND
    assert agent.returncode == 0
    gate = condition(admin.pod(pod.namespace, pod.name), GATE)
    assert gate is not None
    assert (gate["status"], gate["reason"]) == ("False", "AgentStopped"), agent.describe()
    assert "denied request" not in str(agent.logs), agent.describe()


# --- denied: other Pods -------------------------------------------------------------------------


def test_another_pod_is_denied_by_the_policy_though_rbac_alone_allows_it(
    control_plane: ControlPlane, admin: KubeClient, namespace: str, make_pod: Callable[..., PodRef]
) -> None:
    own = make_pod()
    other = make_pod()
    message = denied_by_policy(
        lambda: token_client(control_plane, own).patch_pod_status(
            other.namespace, other.name, agent_patch(other, "True")
        )
    )
    assert f"may only write that Pod, not Pod {other.name}" in message
    assert condition(admin.pod(other.namespace, other.name), GATE) is None

    # The very same Role and RoleBinding, bound to a ServiceAccount the policy does not match:
    # RBAC lets it write another Pod's gate AND move that Pod into another Service by its labels.
    create_agent_rbac(admin, namespace, name=UNMATCHED_SA)
    writer = create_pod(admin, namespace, service_account=UNMATCHED_SA)
    rbac_only = token_client(control_plane, writer, UNMATCHED_SA)
    rbac_only.patch_pod_status(other.namespace, other.name, agent_patch(other, "True"))
    rbac_only.patch_pod_status(
        other.namespace, other.name, {"metadata": {"labels": {"app": "payments"}}}
    )
    hijacked = admin.pod(other.namespace, other.name)
    assert condition_status(hijacked, GATE) == "True"
    assert hijacked["metadata"]["labels"]["app"] == "payments"
    # ...and point the Pod's Service endpoints at an address of its choosing (until the kubelet
    # next writes its own status: the EndpointSlice controller follows status.podIPs).
    redirected = rbac_only.patch_pod_status(
        other.namespace,
        other.name,
        {"status": {"podIP": "10.250.0.98", "podIPs": [{"ip": "10.250.0.98"}]}},
        MERGE,
    )
    assert redirected["status"]["podIP"] == "10.250.0.98"


def test_service_accounts_named_with_the_agent_prefix_are_restricted_too(
    control_plane: ControlPlane, admin: KubeClient, namespace: str, make_pod: Callable[..., PodRef]
) -> None:
    per_app = f"{AGENT_SA}-tomcat"
    create_agent_rbac(admin, namespace, name=per_app)
    own = create_pod(admin, namespace, service_account=per_app)
    other = make_pod()
    agent = token_client(control_plane, own, per_app)
    agent.patch_pod_status(own.namespace, own.name, agent_patch(own, "True"))
    denied_by_policy(
        lambda: agent.patch_pod_status(other.namespace, other.name, agent_patch(other, "True"))
    )


def test_agent_token_may_list_and_watch_its_own_pod_by_name(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    agent = token_client(control_plane, pod)
    pods = f"/api/v1/namespaces/{pod.namespace}/pods"
    by_name = f"metadata.name={pod.name}"

    listed = agent.get(pods, fieldSelector=by_name)
    assert [item["metadata"]["uid"] for item in listed["items"]] == [pod.uid]
    version = listed["metadata"]["resourceVersion"]
    # What the agent's Pod observer does: a watch of its own Pod from a list's version. The
    # server closes it after timeoutSeconds; a bookmark arrives just before.
    lines = agent.stream(
        pods,
        watch="true",
        fieldSelector=by_name,
        resourceVersion=version,
        allowWatchBookmarks="true",
        timeoutSeconds="3",
    )
    assert all(json.loads(line)["type"] in {"BOOKMARK", "MODIFIED"} for line in lines), lines
    # Nothing cluster-wide: not even a list of Pods outside the namespace.
    with pytest.raises(ApiError) as denied:
        agent.get("/api/v1/pods", fieldSelector=by_name)
    assert denied.value.status == 403


def test_token_is_denied_in_another_namespace_by_rbac(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    own = make_pod()
    elsewhere = create_namespace(control_plane)
    try:
        create_agent_rbac(admin, elsewhere)  # even with the agent's Role there, for its own SA
        other = create_pod(admin, elsewhere, service_account=AGENT_SA)
        agent = token_client(control_plane, own)
        with pytest.raises(ApiError) as denied:
            agent.patch_pod_status(other.namespace, other.name, agent_patch(other, "True"))
        assert denied.value.status == 403
        assert 'cannot patch resource "pods/status"' in denied.value.message
        assert POLICY_NAME not in denied.value.message  # RBAC refused it before admission
        with pytest.raises(ApiError) as unreadable:
            agent.pod(other.namespace, other.name)
        assert unreadable.value.status == 403
        with pytest.raises(ApiError) as unwatchable:
            agent.stream(f"/api/v1/namespaces/{elsewhere}/pods", watch="true", timeoutSeconds="1")
        assert unwatchable.value.status == 403
    finally:
        delete_namespace(control_plane, elsewhere)


def test_token_not_bound_to_a_pod_is_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    unbound = token_client(control_plane, None, namespace=pod.namespace)
    assert unbound.pod(pod.namespace, pod.name)["metadata"]["uid"] == pod.uid  # RBAC: may read
    message = denied_by_policy(
        lambda: unbound.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "True"))
    )
    assert "not bound to a Pod" in message
    assert condition(admin.pod(pod.namespace, pod.name), GATE) is None


def test_legacy_secret_token_is_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    """A long-lived Secret token carries no ``extra`` at all: denied with the same clear message
    (not an evaluation error)."""
    pod = make_pod()
    secrets = f"/api/v1/namespaces/{pod.namespace}/secrets"
    admin.post(
        secrets,
        {
            "metadata": {
                "name": "legacy-token",
                "annotations": {"kubernetes.io/service-account.name": AGENT_SA},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    encoded = wait_for(
        "the token controller to fill the Secret",
        lambda: admin.get(f"{secrets}/legacy-token").get("data", {}).get("token"),
    )
    legacy = admin.with_token(base64.b64decode(encoded).decode(), control_plane.pki.ca_cert)
    message = denied_by_policy(
        lambda: legacy.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "True"))
    )
    assert "not bound to a Pod" in message


# --- denied: anything on its own Pod but its gate -----------------------------------------------


@pytest.mark.parametrize("kubelet_condition", ["Ready", "ContainersReady", "PodScheduled"])
def test_writing_a_kubelet_condition_is_denied(
    control_plane: ControlPlane,
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    kubelet_condition: str,
) -> None:
    pod = make_pod()
    before = admin.pod(pod.namespace, pod.name)
    flipped = "False" if condition_status(before, kubelet_condition) == "True" else "True"
    agent = token_client(control_plane, pod)
    message = denied_by_policy(
        lambda: agent.patch_pod_status(
            pod.namespace, pod.name, agent_patch(pod, flipped, kubelet_condition)
        )
    )
    assert f"denied change of condition(s) [{kubelet_condition}]" in message
    assert f"spec.readinessGates [{GATE}]" in message
    unchanged(admin, pod, before)


def test_a_condition_type_not_in_the_pods_readiness_gates_is_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()  # declares only GATE
    before = admin.pod(pod.namespace, pod.name)
    agent = token_client(control_plane, pod)
    message = denied_by_policy(
        lambda: agent.patch_pod_status(
            pod.namespace, pod.name, agent_patch(pod, "True", OTHER_GATE)
        )
    )
    assert f"denied change of condition(s) [{OTHER_GATE}]" in message
    unchanged(admin, pod, before)


def test_a_kubernetes_condition_declared_as_a_readiness_gate_stays_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    """The API server accepts ``readinessGates: [{conditionType: Ready}]``; the policy never
    lets the agent write a condition that Kubernetes owns, declared or not."""
    pod = make_pod(gates=(GATE, "Ready"))
    before = admin.pod(pod.namespace, pod.name)
    agent = token_client(control_plane, pod)
    flipped = "False" if condition_status(before, "Ready") == "True" else "True"
    message = denied_by_policy(
        lambda: agent.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, flipped, "Ready"))
    )
    assert "denied change of condition(s) [Ready]" in message
    unchanged(admin, pod, before)


@pytest.mark.parametrize(
    ("patch", "content_type", "denied_field"),
    [
        pytest.param(
            {"metadata": {"labels": {"app": "payments"}}}, STRATEGIC, "metadata.labels", id="label"
        ),
        pytest.param(
            {"metadata": {"annotations": {"prometheus.io/scrape": "true"}}},
            STRATEGIC,
            "metadata.annotations",
            id="annotation",
        ),
        pytest.param(
            {"metadata": {"finalizers": ["example.com/x"]}},
            STRATEGIC,
            "metadata.finalizers",
            id="finalizer",
        ),
        pytest.param({"status": {"phase": "Succeeded"}}, STRATEGIC, "status.phase", id="phase"),
        pytest.param(
            {"status": {"message": "all good"}}, STRATEGIC, "status.message", id="status-message"
        ),
        # A merge patch replaces the list (a strategic one would merge by ip and fail validation
        # with two IPv4 addresses once the kubelet has set one).
        pytest.param(
            {"status": {"podIP": "10.250.0.98", "podIPs": [{"ip": "10.250.0.98"}]}},
            MERGE,
            "status.podIP",
            id="pod-ip",
        ),
    ],
)
def test_changes_besides_conditions_through_pods_status_are_denied(
    control_plane: ControlPlane,
    make_pod: Callable[..., PodRef],
    patch: JSON,
    content_type: str,
    denied_field: str,
) -> None:
    admin = control_plane.admin
    pod = make_pod()
    before = admin.pod(pod.namespace, pod.name)
    agent = token_client(control_plane, pod)
    message = denied_by_policy(
        lambda: agent.patch_pod_status(pod.namespace, pod.name, patch, content_type)
    )
    assert denied_field in message
    unchanged(admin, pod, before)


def test_a_gate_write_bundled_with_a_label_change_is_denied_as_a_whole(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    before = admin.pod(pod.namespace, pod.name)
    bundled = agent_patch(pod, "True")
    bundled["metadata"]["labels"] = {"app": "payments"}
    message = denied_by_policy(
        lambda: token_client(control_plane, pod).patch_pod_status(pod.namespace, pod.name, bundled)
    )
    assert "metadata.labels" in message
    unchanged(admin, pod, before)


def test_json_patch_appending_a_duplicate_gate_condition_is_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    agent = token_client(control_plane, pod)
    agent.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "False"))
    before = admin.pod(pod.namespace, pod.name)
    append = [
        {
            "op": "add",
            "path": "/status/conditions/-",
            "value": {"type": GATE, "status": "True", "lastTransitionTime": timestamp(time.time())},
        }
    ]
    message = denied_by_policy(
        lambda: agent.patch_pod_status(pod.namespace, pod.name, append, JSON_PATCH)
    )
    assert f"duplicate condition type(s) in status.conditions: [{GATE}" in message
    unchanged(admin, pod, before)


def test_merge_patch_replacing_the_whole_condition_list_is_denied(
    control_plane: ControlPlane, admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    before = admin.pod(pod.namespace, pod.name)
    agent = token_client(control_plane, pod)
    message = denied_by_policy(
        lambda: agent.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "True"), MERGE)
    )
    for dropped in ("Ready", "ContainersReady", "PodScheduled"):
        assert dropped in message
    unchanged(admin, pod, before)


# --- the policy itself --------------------------------------------------------------------------


def test_other_identities_are_not_restricted(
    admin: KubeClient, make_pod: Callable[..., PodRef]
) -> None:
    pod = make_pod()
    admin.patch_pod_status(pod.namespace, pod.name, {"metadata": {"labels": {"tier": "x"}}})
    admin.patch_pod_status(pod.namespace, pod.name, agent_patch(pod, "True", "Ready"))
    live = admin.pod(pod.namespace, pod.name)
    assert live["metadata"]["labels"]["tier"] == "x"


def test_policy_is_installed_and_its_expressions_type_check_against_the_pod_schema(
    admin: KubeClient,
) -> None:
    """The API server type-checks policies against the schema, but skips subresources: a policy
    on ``pods/status`` always reports no warnings. A twin on ``pods`` (never bound, so never
    enforced) shows what the checker says about the same expressions."""
    base = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    policy, binding = policy_manifests()
    installed = admin.get(f"{base}/{POLICY_NAME}")
    assert installed["spec"]["failurePolicy"] == "Fail"
    assert installed["status"].get("typeChecking", {}).get("expressionWarnings") is None
    assert binding["spec"]["validationActions"] == ["Deny"]
    admin.get(
        f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/{POLICY_NAME}"
    )

    twin = {**policy, "metadata": {"name": unique_name("typecheck-twin")}}
    twin["spec"] = {**policy["spec"], "matchConstraints": {"resourceRules": [
        {**policy["spec"]["matchConstraints"]["resourceRules"][0], "resources": ["pods"]}
    ]}}  # fmt: skip
    created = admin.post(base, twin)
    name = created["metadata"]["name"]

    def type_checked() -> JSON | None:
        current = admin.get(f"{base}/{name}")
        return current if current.get("status", {}).get("observedGeneration") else None

    try:
        checked = wait_for("the twin policy to be type-checked", type_checked)
        warnings = checked["status"].get("typeChecking", {}).get("expressionWarnings")
        assert warnings is None, warnings
    finally:
        admin.delete(f"{base}/{name}")
