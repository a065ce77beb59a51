"""The demo: a real control plane, a real node, a real legacy app, the agent, and the gate flipping.

    make demo        (or: python -m scripts.demo, as root, after `make binaries`)

On the real node (the default): Debian's Tomcat 10 in a container, the agent in its own container
from the image built from ./Dockerfile, under a real kubelet and containerd. ``kubectl get pod -o
wide`` shows READINESS GATES go 0/1 -> 1/1 when Tomcat logs its startup line. Then Tomcat's JVM
is killed: the kubelet restarts the container, the agent sees that in its watch of its own Pod,
and the gate goes 0/1 (``ContainerRestarted``: the old instance's startup line, still in
catalina.out, no longer counts) and back to 1/1 when the new Tomcat logs its own. The first run
builds the node and its images with visible progress; later runs reuse ~/.cache.

If the real node cannot start on this machine, the demo says why and runs the hollow-node demo:
a private Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager and a
hollow kubelet, built from the official Go modules and cached), creates a Pod that declares the
readiness gate ``example.com/legacy-ready``, starts a fake legacy server that logs
``Server startup in N ms`` after a few seconds, and starts the agent with the Pod's bound token.
``kubectl get pod -o wide`` then shows READINESS GATES go from 0/1 to 1/1 and READY flip, and
``kubectl describe`` shows the gate's reason. Finally the app "crashes" and the gate goes back.
Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.harness.agent import AgentProcess, agent_env, bound_token_dir
from tests.harness.binaries import BuildError
from tests.harness.cluster import ControlPlane, HarnessError
from tests.harness.images import ImageBuildError
from tests.harness.kube import JSON, condition_status
from tests.harness.node import NODE_NAME, RealNode
from tests.harness.workloads import (
    GATE,
    create_agent_rbac,
    create_namespace,
    create_pod,
    create_service,
    install_admission_policy,
)
from tests.node.support import TOMCAT_PATTERN, container_id, tomcat_container

NAMESPACE = "demo"
POD = "legacy-app"
READY_AFTER = 6.0


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@contextlib.contextmanager
def legacy_app(log: Path) -> Iterator[subprocess.Popen[bytes]]:
    app = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.legacy_app", "--log", str(log),
         "--ready-after", str(READY_AFTER)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield app
    finally:
        app.terminate()
        app.wait(5)


def watch(plane: ControlPlane, until: Callable[[], bool], timeout: float) -> None:
    """Print `kubectl get pod -o wide` when anything but AGE changes, until ``until()``.

    kubectl's READY column counts ready containers; the Pod's own Ready condition (what
    Services and rollouts use, computed by the kubelet from containers AND readiness gates) is
    added on the right.
    """
    last: tuple[str, ...] = ()
    deadline = time.monotonic() + timeout
    header_shown = False
    while time.monotonic() < deadline:
        lines = plane.kubectl("-n", NAMESPACE, "get", "pod", POD, "-o", "wide").stdout.splitlines()
        ready = condition_status(plane.admin.pod(NAMESPACE, POD), "Ready")
        columns = lines[-1].split()
        key = (*columns[:4], *columns[5:], str(ready))  # everything but AGE
        if key != last:
            if not header_shown:
                print(f"            {lines[0]}   POD READY CONDITION")
                header_shown = True
            print(f"  {time.strftime('%H:%M:%S')}  {lines[-1]}   {ready}", flush=True)
            last = key
        if until():
            return
        time.sleep(0.2)
    raise TimeoutError("the demo did not reach the expected state in time")


def describe_excerpt(plane: ControlPlane) -> str:
    text = plane.kubectl("-n", NAMESPACE, "describe", "pod", POD).stdout
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith(("Readiness Gates:", "Conditions:", "Events:")):
            keep = True
        elif line and not line.startswith(" "):
            keep = False
        if keep:
            out.append(line)
    return "\n".join(out)


def gate_condition(plane: ControlPlane) -> str:
    jsonpath = f'{{.status.conditions[?(@.type=="{GATE}")]}}'
    return plane.kubectl("-n", NAMESPACE, "get", "pod", POD, "-o", f"jsonpath={jsonpath}").stdout


def hollow_demo(plane: ControlPlane) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        admin = plane.admin
        create_namespace(plane, NAMESPACE)
        install_admission_policy(plane)
        create_agent_rbac(admin, NAMESPACE)
        say(f"Creating Pod {NAMESPACE}/{POD} with readinessGates: [{GATE}] and a Service")
        pod = create_pod(admin, NAMESPACE, POD, service_account="readiness-gate-sidecar")
        create_service(admin, NAMESPACE, "legacy", {"app": POD})

        log = work / "logs" / "catalina.out"
        say(f"Starting the legacy app: it logs 'Server startup in N ms' after {READY_AFTER:g} s")
        with legacy_app(log) as app:
            token = bound_token_dir(plane, pod, work / "serviceaccount")
            env = agent_env(pod, token.path, {
                "GATE_CONDITION_TYPE": GATE,
                "CHECK_APP_KIND": "log",
                "CHECK_APP_PATH": str(log),
                "CHECK_APP_PATTERN": r"Server startup in \d+ ms",
                "CHECK_APP_FAIL_PATTERN": "SEVERE",
                "CHECK_APP_FAILURE_THRESHOLD": "1",
            })  # fmt: skip
            say("Starting the agent with the Pod's bound ServiceAccount token")
            agent = AgentProcess(env)
            try:
                agent.wait_started()
                say("kubectl get pod -o wide  (watch READY and READINESS GATES)")
                watch(plane, lambda: _ready(plane) == "True", timeout=60)
                say("kubectl describe pod (excerpt): the gate explains itself")
                print(describe_excerpt(plane))

                say("The legacy app logs 'SEVERE: Servlet engine stopped': the gate goes False")
                app.send_signal(signal.SIGUSR1)
                watch(plane, lambda: _ready(plane) == "False", timeout=30)
                print(f"\n  condition: {gate_condition(plane)}")
            finally:
                elapsed = agent.stop()
                say(f"Agent stopped on SIGTERM in {elapsed * 1000:.0f} ms")


def _ready(plane: ControlPlane) -> str | None:
    return condition_status(plane.admin.pod(NAMESPACE, POD), "Ready")


def _gate(plane: ControlPlane) -> str | None:
    return condition_status(plane.admin.pod(NAMESPACE, POD), GATE)


def real_pod(node: RealNode) -> JSON:
    """Tomcat and the agent's container, as README's Pod spec (a log check)."""
    env = [
        {"name": f, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.{p}"}}}
        for f, p in (("POD_NAME", "name"), ("POD_NAMESPACE", "namespace"), ("POD_UID", "uid"))
    ] + [
        {"name": k, "value": v}
        for k, v in {
            "GATE_CONDITION_TYPE": GATE,
            "GATE_PERIOD_SECONDS": "1",
            "GATE_TIMEOUT_SECONDS": "0.5",
            "CHECK_APP_KIND": "log",
            "CHECK_APP_PATH": "/logs/catalina.out",
            "CHECK_APP_PATTERN": TOMCAT_PATTERN,
            "CHECK_APP_FAIL_PATTERN": r"Pausing ProtocolHandler|java\.lang\.OutOfMemoryError",
        }.items()
    ]
    agent = {
        "name": "readiness-gate",
        "image": node.images.agent.name,
        "imagePullPolicy": "Never",
        "env": env,
        "volumeMounts": [{"name": "logs", "mountPath": "/logs", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9779}, "periodSeconds": 2},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
    }  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "labels": {"app": POD}},
        "spec": {
            "nodeName": NODE_NAME,
            "serviceAccountName": "readiness-gate-sidecar",
            "readinessGates": [{"conditionType": GATE}],
            "terminationGracePeriodSeconds": 3,  # the demo's clean-up need not wait for Tomcat
            "securityContext": {"fsGroup": 65532},
            "containers": [tomcat_container(node), agent],
            "volumes": [{"name": "logs", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def real_node_demo(plane: ControlPlane, node: RealNode) -> None:
    admin = plane.admin
    create_namespace(plane, NAMESPACE)
    install_admission_policy(plane)
    create_agent_rbac(admin, NAMESPACE)
    say(
        f"Creating Pod {NAMESPACE}/{POD} on the real node {NODE_NAME}: Debian's Tomcat 10 and "
        f"the agent from ./Dockerfile, readinessGates: [{GATE}]"
    )
    admin.post(f"/api/v1/namespaces/{NAMESPACE}/pods", real_pod(node))
    create_service(admin, NAMESPACE, "legacy", {"app": POD})
    say("kubectl get pod -o wide  (Tomcat starts: the gate waits for its startup line)")
    watch(plane, lambda: _ready(plane) == "True", timeout=240)
    say("kubectl describe pod (excerpt): the gate explains itself")
    print(describe_excerpt(plane))
    jvm = container_id(admin.pod(NAMESPACE, POD), "app")
    say("Killing Tomcat's JVM (SIGKILL): the kubelet restarts the container")
    node.ctr("tasks", "kill", "--signal", "SIGKILL", jvm)
    watch(plane, lambda: _gate(plane) == "False", timeout=60)
    print(f"\n  condition: {gate_condition(plane)}")
    say("The new Tomcat starts; when it logs its own startup line, the gate is True again")
    watch(plane, lambda: _ready(plane) == "True", timeout=240)
    print(
        "\n  The agent saw the kubelet start a new instance of the container (it watches its\n"
        "  own Pod): the dead instance's startup line, still in catalina.out, no longer counted."
    )


def main() -> None:
    started = time.monotonic()
    say("Starting a private Kubernetes control plane (built once from the Go modules, cached)")
    with ControlPlane.started(hollow_node=False) as plane:
        try:
            say("Starting a real node: kubelet + containerd + runc (first run: builds, ~5-10 min)")
            node_context = RealNode.started(plane)
            node = node_context.__enter__()
        except (HarnessError, BuildError, ImageBuildError, OSError) as err:
            say(f"The real node cannot start on this machine: {err}")
            say("Falling back to the hollow-node demo (the agent and the app as local processes)")
            plane.start_hollow_node()
            hollow_demo(plane)
        else:
            try:
                real_node_demo(plane, node)
            finally:
                say("Cleaning up the real node")
                node_context.__exit__(None, None, None)
        say("Cleaning up the control plane")
    say(f"Done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
