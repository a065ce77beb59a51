"""Container restarts on the real node: crash loops, stale markers, what /status shows (issue 11).

The application is a small shell program in Debian's image (the redis image, which has /bin/sh),
run by the real kubelet, restarted by it, with the chart's sidecar beside it. The kubelet restarts
a container whose process exited at once the first time, then after a back-off (10 s, 20 s, ...):
CrashLoopBackOff.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.harness.cluster import ControlPlane
from tests.harness.helm import Helm, Installer
from tests.harness.kube import JSON, KubeClient, condition, wait_for
from tests.harness.node import RealNode
from tests.harness.workloads import GATE
from tests.node.support import (
    chart_values,
    container_id,
    container_status,
    example_pod,
    pod_ref,
    render_example,
    shell_app,
)

READY_LINE = "Server startup in [12] milliseconds"


def _deploy(
    helm: Helm, installer: Installer, namespace: str, tmp_path: Path, app: JSON, checks: JSON
) -> None:
    values = chart_values(native=False)
    values["checks"] = checks  # instead of the Tomcat log check
    manifests, _ = render_example(helm, namespace, values, tmp_path, app)
    installer.apply(manifests)


def _gate(admin: KubeClient, namespace: str, name: str) -> JSON:
    return condition(admin.pod(namespace, name), GATE) or {}


def _agent_status(admin: KubeClient, namespace: str, name: str) -> JSON:
    """The agent's /status, from its Pod's IP (the harness's network namespace reaches it)."""
    ip = admin.pod(namespace, name)["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:9779/status", timeout=5) as response:
        status: JSON = json.loads(response.read())
        return status


def test_a_crash_looping_app_never_turns_the_gate_true_again_after_its_first_crash(
    control_plane: ControlPlane,
    real_node: RealNode,
    helm: Helm,
    chart_namespace: tuple[str, Installer],
    tmp_path: Path,
) -> None:
    namespace, installer = chart_namespace
    admin = control_plane.admin
    # The first instance logs its ready line, then crashes; every later one starts, fails, exits.
    script = f"""
        if [ ! -e /logs/started-once ]; then
            touch /logs/started-once
            echo "$(date) INFO {READY_LINE}" >> /logs/app.log
            sleep 4
        else
            echo "$(date) INFO Initializing ProtocolHandler" >> /logs/app.log
            sleep 1
        fi
        echo "$(date) SEVERE java.lang.IllegalStateException: no database" >> /logs/app.log
        exit 1
    """
    checks = {"APP": {"kind": "log", "path": "/logs/app.log", "pattern": r"Server startup in",
                      "failureThreshold": 3}}  # fmt: skip
    _deploy(helm, installer, namespace, tmp_path, shell_app(real_node, script), checks)
    ref = pod_ref(example_pod(admin, namespace))
    wait_for("the gate True", lambda: _gate(admin, namespace, ref.name).get("status") == "True",
             timeout=120, interval=0.1)  # fmt: skip

    seen: list[tuple[float, str, str, int]] = []  # (time, gate status, reason, restarts)

    def looping() -> bool:
        pod = admin.pod(namespace, ref.name)
        cond = condition(pod, GATE) or {}
        restarts = int(container_status(pod, "app")["restartCount"])
        seen.append((time.monotonic(), cond.get("status", ""), cond.get("reason", ""), restarts))
        return restarts >= 3

    wait_for("three restarts", looping, timeout=120, interval=0.1)
    after_crash = [s for s in seen if s[3] >= 1 or s[1] == "False"]
    assert after_crash, seen
    first_false = next(i for i, s in enumerate(seen) if s[1] == "False")
    # From the first crash on, nothing vouches for the app again: the old ready line is still the
    # latest match in the log, but it belongs to an instance that is gone.
    assert all(s[1] == "False" for s in seen[first_false:]), seen
    reasons = {s[2] for s in seen[first_false:]}
    assert "ContainerNotRunning" in reasons, reasons
    cond = _gate(admin, namespace, ref.name)
    assert cond["status"] == "False"
    messages = {cond["message"]}
    while "CrashLoopBackOff" not in " ".join(messages):
        messages.add(_gate(admin, namespace, ref.name).get("message", ""))
        time.sleep(0.1)
        assert time.monotonic() - seen[-1][0] < 60, messages
    status = _agent_status(admin, namespace, ref.name)
    follows = status["checks"]["APP"]["follows"]
    assert [c["container"] for c in follows["containers"]] == ["app"]
    assert follows["containers"][0]["restart_count"] >= 3


def test_a_marker_left_by_the_old_instance_does_not_count_for_the_new_one(
    control_plane: ControlPlane,
    real_node: RealNode,
    helm: Helm,
    chart_namespace: tuple[str, Installer],
    tmp_path: Path,
) -> None:
    namespace, installer = chart_namespace
    admin = control_plane.admin
    # Ready 3 s after each start, and says so with a marker file on the shared emptyDir.
    script = "sleep 3; touch /logs/ready; while :; do sleep 1; done"
    checks = {"MARKER": {"kind": "file", "path": "/logs/ready", "failureThreshold": 3}}
    _deploy(helm, installer, namespace, tmp_path, shell_app(real_node, script), checks)
    ref = pod_ref(example_pod(admin, namespace))
    wait_for("the gate True", lambda: _gate(admin, namespace, ref.name).get("status") == "True",
             timeout=120, interval=0.1)  # fmt: skip
    old = container_id(admin.pod(namespace, ref.name), "app")
    # startedAt has whole seconds, so evidence from the second the new instance starts in counts
    # as its own (README): kill the app over a second after the marker, outside that window.
    time.sleep(1.2)
    real_node.ctr("tasks", "kill", "--signal", "SIGKILL", old)  # the app dies; the marker stays

    def restarted() -> JSON | None:
        pod = admin.pod(namespace, ref.name)
        status = container_status(pod, "app")
        new = container_id(pod, "app") not in ("", old) and "running" in status["state"]
        return pod if new else None

    pod = wait_for("the kubelet to restart the app", restarted, timeout=60, interval=0.05)
    restarted_at = time.monotonic()
    # The marker is there all along, but older than the new instance: False until it is touched
    # again by the new instance, 3 s after its start.
    down = wait_for(
        "the gate False",
        lambda: ((c := _gate(admin, namespace, ref.name)).get("status") == "False" and c) or None,
        timeout=10,
        interval=0.05,
    )
    assert down["reason"] in {"ContainerRestarted", "ContainerNotRunning"}, down
    up = wait_for(
        "the gate True again",
        lambda: ((c := _gate(admin, namespace, ref.name)).get("status") == "True" and c) or None,
        timeout=30,
        interval=0.05,
    )
    assert time.monotonic() - restarted_at >= 2.0  # not before the new instance touched it
    started = container_status(pod, "app")["state"]["running"]["startedAt"]
    assert up["lastTransitionTime"] >= started
