"""The demo: a real control plane, a legacy app, the agent, and the gate flipping.

    make demo        (or: python -m scripts.demo, as root, after `make binaries`)

It starts a private Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager and a
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
from tests.harness.cluster import ControlPlane
from tests.harness.kube import condition_status
from tests.harness.workloads import (
    GATE,
    create_agent_rbac,
    create_namespace,
    create_pod,
    create_service,
    install_admission_policy,
)

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


def main() -> None:
    started = time.monotonic()
    say("Starting a private Kubernetes control plane (built once from the Go modules, cached)")
    with ControlPlane.started() as plane, tempfile.TemporaryDirectory() as tmp:
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
                ready = lambda: condition_status(admin.pod(NAMESPACE, POD), "Ready") == "True"  # noqa: E731
                watch(plane, ready, timeout=60)
                say("kubectl describe pod (excerpt): the gate explains itself")
                print(describe_excerpt(plane))

                say("The legacy app logs 'SEVERE: Servlet engine stopped': the gate goes False")
                app.send_signal(signal.SIGUSR1)
                not_ready = lambda: condition_status(admin.pod(NAMESPACE, POD), "Ready") == "False"  # noqa: E731
                watch(plane, not_ready, timeout=30)
                print(f"\n  condition: {gate_condition(plane)}")
            finally:
                elapsed = agent.stop()
                say(f"Agent stopped on SIGTERM in {elapsed * 1000:.0f} ms")
        say("Cleaning up the control plane")
    say(f"Done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
