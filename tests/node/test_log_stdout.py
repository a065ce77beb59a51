"""A log check of a container's stdout on the real node (issue 15): the API server streams the
real kubelet's container log (``GET pods/<pod>/log?follow=true&timestamps=true``).

examples/log-stdout/tomcat.yaml runs as shipped with Debian's Tomcat 10 (only the image, its
user and its paths change); a shell program stands in where a test needs a line on cue. The node's
kubelet rotates container logs at ``CONTAINER_LOG_MAX_SIZE`` (1Mi), checked every 3 s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from sidecar.podlogs import POD_LOGS_RULE
from tests.harness.cluster import ControlPlane
from tests.harness.helm import Helm, Installer
from tests.harness.kube import JSON, KubeClient, condition, wait_for
from tests.harness.node import NODE_NAME, RealNode
from tests.harness.workloads import (
    GATE,
    create_agent_rbac,
    create_pod_logs_rbac,
)
from tests.node.support import (
    SIDECAR,
    TOMCAT_LOG_DIR,
    audit_events,
    chart_values,
    container_id,
    container_status,
    emptydir_file,
    example_pod,
    pod_ref,
    render_example,
    shell_app,
    tomcat_container,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "log-stdout" / "tomcat.yaml"
TOMCAT_GATE = "example.com/tomcat-ready"
TOMCAT_POD = "legacy-tomcat-stdout"
READY_LINE = "INFO Server startup in [12] milliseconds"


def _example(node: RealNode) -> list[JSON]:
    docs = [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    pod["spec"]["nodeName"] = NODE_NAME
    containers = pod["spec"]["containers"]
    index = next(i for i, c in enumerate(containers) if c["name"] == "tomcat")
    assert containers[index]["args"][0].rstrip().endswith("exec catalina.sh run")  # to stdout
    tomcat = tomcat_container(node)
    tomcat["name"] = "tomcat"
    tomcat["args"] = ["exec /usr/share/tomcat10/bin/catalina.sh run"]  # Debian's paths
    tomcat["volumeMounts"] = [{"name": "logs", "mountPath": TOMCAT_LOG_DIR}]
    containers[index] = tomcat
    return docs


def _status_of(admin: KubeClient, namespace: str, name: str, gate: str) -> JSON:
    return condition(admin.pod(namespace, name), gate) or {}


def _until(admin: KubeClient, namespace: str, name: str, gate: str, status: str,
           timeout: float = 60) -> JSON:  # fmt: skip
    def reached() -> JSON | None:
        cond = _status_of(admin, namespace, name, gate)
        return cond if cond.get("status") == status else None

    def describe() -> str:
        pod = admin.pod(namespace, name)
        sidecar = next(c["name"] for c in pod["spec"]["containers"] if "readiness" in c["name"])
        logs = admin.raw(f"/api/v1/namespaces/{namespace}/pods/{name}/log?container={sidecar}")
        return f"gate: {condition(pod, gate)}\nagent's log: {logs[-4000:]}"

    found: JSON = wait_for(
        f"the gate {status}", reached, timeout=timeout, interval=0.1, describe=describe
    )
    return found


def test_the_log_stdout_example_follows_tomcats_stdout_and_its_restarted_instance(
    control_plane: ControlPlane, real_node: RealNode, namespace: str
) -> None:
    admin = control_plane.admin
    create_agent_rbac(admin, namespace)
    create_pod_logs_rbac(admin, namespace)
    manifests = "---\n".join(yaml.safe_dump(doc) for doc in _example(real_node))
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input_text=manifests)

    ready = _until(admin, namespace, TOMCAT_POD, TOMCAT_GATE, "True", timeout=180)
    assert ready["reason"] == "ChecksPassed", ready
    assert "the output of container tomcat" in ready["message"], ready
    old = container_id(admin.pod(namespace, TOMCAT_POD), "tomcat")
    real_node.ctr("tasks", "kill", "--signal", "SIGKILL", old)

    def restarted() -> JSON | None:
        pod = admin.pod(namespace, TOMCAT_POD)
        status = container_status(pod, "tomcat")
        new = container_id(pod, "tomcat") not in ("", old) and "running" in status["state"]
        return pod if new else None

    pod = wait_for("the kubelet to restart Tomcat", restarted, timeout=60, interval=0.05)
    down = _until(admin, namespace, TOMCAT_POD, TOMCAT_GATE, "False", timeout=30)
    # Reset: the restart itself, or already the check's verdict on the new instance's first lines.
    reset = down["reason"] in {"ContainerRestarted", "ContainerNotRunning"}
    assert reset or "since the application started" in down["message"], down
    # True again only on the new instance's own startup line, read from its output.
    up = _until(admin, namespace, TOMCAT_POD, TOMCAT_GATE, "True", timeout=120)
    started = container_status(pod, "tomcat")["state"]["running"]["startedAt"]
    assert up["lastTransitionTime"] >= started, (up, started)


# --- the chart's sidecar beside a shell program ---------------------------------------------


STDOUT_CHECK = {
    "APP": {
        "kind": "log",
        "container": "app",
        "pattern": r"Server startup in",
        "failPattern": r"java\.lang\.OutOfMemoryError",
        "failureThreshold": 1,
    }
}


def _deploy(
    helm: Helm, chart_namespace: tuple[str, Installer], tmp_path: Path, app: JSON, *, logs: bool
) -> tuple[str, str]:
    namespace, installer = chart_namespace
    values = chart_values(native=False, rbac={"podLogs": logs})
    values["checks"] = STDOUT_CHECK
    manifests, _ = render_example(helm, namespace, values, tmp_path, app)
    installer.apply(manifests)
    return namespace, pod_ref(example_pod(installer.plane.admin, namespace)).name


def _rotated(node: RealNode, pod: JSON) -> list[str]:
    """The kubelet's rotated files of container app's log (``0.log.<time>``, maybe ``.gz``)."""
    meta = pod["metadata"]
    directory = node.node_path(
        f"/var/log/pods/{meta['namespace']}_{meta['name']}_{meta['uid']}/app"
    )
    return sorted(p.name for p in directory.iterdir() if p.name != "0.log")


def _log_requests(plane: ControlPlane, namespace: str, pod: str) -> list[JSON]:
    """The agent's GETs of its Pod's log, from the API server's audit log (a stream still open
    has only its ResponseStarted event)."""
    user = f"system:serviceaccount:{namespace}:"
    found = {
        event["auditID"]: event
        for event in audit_events(
            plane.workdir / "audit.log",
            lambda e: (
                e.get("objectRef", {}).get("subresource") == "log"
                and e.get("objectRef", {}).get("name") == pod
                and e.get("objectRef", {}).get("namespace") == namespace
                and e.get("user", {}).get("username", "").startswith(user)
                and e.get("stage") in ("ResponseStarted", "ResponseComplete")
            ),
        )
    }
    return list(found.values())


def test_a_stdout_line_turns_the_gate_true_a_fail_line_after_rotations_turns_it_false(
    control_plane: ControlPlane,
    real_node: RealNode,
    helm: Helm,
    chart_namespace: tuple[str, Installer],
    tmp_path: Path,
) -> None:
    admin = control_plane.admin
    # ~3 MiB of noise on cue, in three bursts: the kubelet (1Mi, every 3 s) rotates between them.
    script = f"""
        echo "Starting Servlet engine"
        echo "{READY_LINE}"
        while [ ! -e /logs/flood ]; do sleep 0.2; done
        for burst in 1 2 3; do
            i=0
            while [ $i -lt 11000 ]; do
                echo "DEBUG burst $burst line $i: padding padding padding padding padding padding"
                i=$((i+1))
            done
            sleep 4
        done
        echo "SEVERE java.lang.OutOfMemoryError: Java heap space"
        while :; do sleep 1; done
    """
    namespace, name = _deploy(helm, chart_namespace, tmp_path, shell_app(real_node, script),
                              logs=True)  # fmt: skip
    ready = _until(admin, namespace, name, GATE, "True", timeout=120)
    assert "the output of container app" in ready["message"], ready
    pod = admin.pod(namespace, name)
    emptydir_file(real_node, pod, "logs", "flood").write_text("")
    flooded = time.monotonic()

    failed = _until(admin, namespace, name, GATE, "False", timeout=60)
    assert "fail pattern" in failed["message"], failed
    assert time.monotonic() - flooded >= 8  # after the bursts, not before
    rotated = _rotated(real_node, pod)
    assert rotated, "the kubelet did not rotate the container's log"
    logs = control_plane.kubectl("-n", namespace, "logs", name, "-c", SIDECAR).stdout
    assert "container_log_failed" not in logs  # rotations are no failures
    # Measured with kubelet v1.37.2: one stream across both rotations (the kubelet follows the
    # rotation); an older kubelet ends it and the agent resumes from the last line's second.
    streams = _log_requests(control_plane, namespace, name)
    assert streams
    assert {e["responseStatus"]["code"] for e in streams} == {200}


def test_without_get_on_pods_log_the_gate_stays_false_and_says_which_rule_is_missing(
    control_plane: ControlPlane,
    real_node: RealNode,
    helm: Helm,
    chart_namespace: tuple[str, Installer],
    tmp_path: Path,
) -> None:
    admin = control_plane.admin
    script = f'echo "{READY_LINE}"; while :; do sleep 1; done'
    namespace, name = _deploy(helm, chart_namespace, tmp_path, shell_app(real_node, script),
                              logs=False)  # fmt: skip

    def denied() -> JSON | None:
        cond = _status_of(admin, namespace, name, GATE)
        return cond if "forbidden (403)" in cond.get("message", "") else None

    cond = wait_for("the gate to report the 403", denied, timeout=120, interval=0.2)
    assert cond["status"] == "False"
    assert "get on pods/log" in cond["message"], cond
    assert "rbac.podLogs=true" in cond["message"], cond

    def asked_four_times() -> bool:
        return len(_log_requests(control_plane, namespace, name)) >= 4

    wait_for("the agent to ask three more times", asked_four_times, timeout=60, interval=0.5)
    codes = {e["responseStatus"]["code"] for e in _log_requests(control_plane, namespace, name)}
    assert codes == {403}
    logs = control_plane.kubectl("-n", namespace, "logs", name, "-c", SIDECAR).stdout
    failures = [json.loads(line) for line in logs.splitlines() if "container_log_failed" in line]
    assert len(failures) == 1, failures  # logged once, with the rule to add
    assert POD_LOGS_RULE in failures[0]["error"], failures
