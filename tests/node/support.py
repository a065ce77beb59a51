"""Pods on the real node: the chart's example with a real Tomcat, and what tests read from them.

The Pod specs come from ``helm template`` of ``chart/`` (the sidecar exactly as the chart renders
it) or from ``examples/``; only the application container is swapped for a real legacy server
built from Debian packages, and images are referenced by the names ``tests/harness/images.py``
imported into the node.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.helm import Helm, by_kind, documents
from tests.harness.kube import JSON, KubeClient, condition, condition_status, wait_for
from tests.harness.node import NODE_NAME, RealNode
from tests.harness.workloads import GATE, PodRef, endpoint_ready

SIDECAR = "readiness-gate"  # the chart's container.name
EXAMPLE_SELECTOR = "app.kubernetes.io/component=example"
# Tomcat 10 logs "Server startup in [1,234] milliseconds" (examples/log-java, README).
TOMCAT_PATTERN = r"Server startup in \[?[0-9][0-9,.]*\]? (ms|milliseconds)"
TOMCAT_LOG_DIR = "/var/log/tomcat10"  # $CATALINA_BASE/logs in Debian's tomcat10


def tomcat_container(node: RealNode, *, log: str = "catalina.out") -> JSON:
    """Debian's Tomcat 10, run as a legacy install runs it: console output appended to a log file
    on the shared emptyDir, as ``catalina.sh start`` does (``>>``), by the JVM as PID 1."""
    uid, gid = node.images.tomcat.user.split(":")
    return {
        "name": "app",
        "image": node.images.tomcat.name,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c"],
        "args": [f"exec /usr/share/tomcat10/bin/catalina.sh run >> {TOMCAT_LOG_DIR}/{log} 2>&1"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "192Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "runAsUser": int(uid),  # Debian's tomcat account: its /etc/tomcat10 is root:tomcat 0640
            "runAsGroup": int(gid),
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "logs", "mountPath": TOMCAT_LOG_DIR}],
    }


def shell_app(node: RealNode, script: str) -> JSON:
    """A container running ``script`` with /bin/sh (its output on stdout, /logs mounted); it
    stops at once on SIGTERM."""
    return {
        "name": "app",
        "image": node.images.redis.name,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", f"trap 'exit 0' TERM\n{script}"],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
    }


def chart_values(*, native: bool, **overrides: Any) -> JSON:
    """Values for the chart's example workload on the real node, checking Tomcat's log."""
    values: JSON = {
        "image": {"pullPolicy": "Never"},
        "example": {"enabled": True, "nativeSidecar": native, "nodeName": NODE_NAME},
        "gate": {"periodSeconds": 1, "timeoutSeconds": 0.5},
        "checks": {
            "APP": {
                "kind": "log",
                "path": "/logs/catalina.out",
                "pattern": TOMCAT_PATTERN,
                "failPattern": r"Pausing ProtocolHandler|java\.lang\.OutOfMemoryError",
                "failureThreshold": 1,
            }
        },
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    return values


def redis_container(node: RealNode) -> JSON:
    """Debian's redis-server on the Pod's loopback, without persistence."""
    return {
        "name": "app",
        "image": node.images.redis.name,
        "imagePullPolicy": "Never",
        "args": ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        "ports": [{"name": "http", "containerPort": 6379, "protocol": "TCP"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "logs", "mountPath": "/data"}],
    }


REDIS_CHECK = {
    "kind": "tcp",
    "address": "127.0.0.1:6379",
    "send": r"PING\r\n",
    "expect": r"^\+PONG",
}


def render_example(
    helm: Helm, namespace: str, values: JSON, work: Path, app: JSON
) -> tuple[str, JSON]:
    """``helm template`` of the chart with ``values``; the example's stand-in app becomes ``app``.

    Returns the manifests and the rendered Pod template (for assertions on what was rendered).
    """
    path = work / f"values-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(values))
    docs = documents(helm.template(str(path), namespace=namespace))
    (deployment,) = by_kind(docs, "Deployment")
    template: JSON = deployment["spec"]["template"]
    containers = template["spec"]["containers"]
    index = next(i for i, c in enumerate(containers) if c["name"] == "app")
    containers[index] = app
    return "---\n".join(yaml.safe_dump(doc) for doc in docs), template


def example_pod(admin: KubeClient, namespace: str, timeout: float = 90) -> JSON:
    """The example Deployment's one Pod, once it exists."""

    def find() -> JSON | None:
        pods = admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=EXAMPLE_SELECTOR)
        live = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
        return live[0] if live else None

    return wait_for("the example Deployment's Pod", find, timeout=timeout, interval=0.2)


def pod_ref(pod: JSON) -> PodRef:
    meta = pod["metadata"]
    return PodRef(
        namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], labels=meta["labels"]
    )


def all_statuses(pod: JSON) -> list[JSON]:
    status = pod.get("status", {})
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def container_status(pod: JSON, name: str) -> JSON:
    return next(s for s in all_statuses(pod) if s["name"] == name)


def container_id(pod: JSON, name: str) -> str:
    cid: str = container_status(pod, name).get("containerID", "")
    return cid.removeprefix("containerd://")


def wait_running(admin: KubeClient, ref: PodRef, name: str, timeout: float = 120) -> JSON:
    """The Pod once container ``name`` runs (its status then has a containerID)."""

    def running() -> JSON | None:
        pod = admin.pod(ref.namespace, ref.name)
        statuses = [s for s in all_statuses(pod) if s["name"] == name]
        return pod if statuses and "running" in statuses[0].get("state", {}) else None

    return wait_for(f"{ref.name}: {name} running", running, timeout=timeout, interval=0.2)


def emptydir_file(node: RealNode, pod: JSON, volume: str, name: str) -> Path:
    uid = pod["metadata"]["uid"]
    return node.node_path(
        f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/{volume}/{name}"
    )


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def mounts(pid: int) -> dict[str, list[str]]:
    """Mount point -> [fs type, mount options + super options] of a process (its mountinfo)."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fs_type, _source, super_options = right.split(" ", 2)
        found[fields[4]] = [fs_type, fields[5], super_options]
    return found


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    gate: str | None
    reason: str | None
    ready: str | None
    endpoint: bool | None
    log: str


def sample_until(
    admin: KubeClient,
    ref: PodRef,
    *,
    log: Path,
    service: str | None,
    until: Callable[[Sample], bool],
    timeout: float = 120,
    interval: float = 0.1,
) -> list[Sample]:
    """Observe the gate, Ready, the Service's endpoint and the app's log until ``until``."""
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read_text(log)  # first: a gate seen True below was True after this was read
        pod = admin.pod(ref.namespace, ref.name)
        endpoint = endpoint_ready(admin, ref.namespace, service, ref.name) if service else None
        gate = condition(pod, GATE) or {}
        sample = Sample(
            at=time.time(),
            gate=gate.get("status"),
            reason=gate.get("reason"),
            ready=condition_status(pod, "Ready"),
            endpoint=endpoint,
            log=text,
        )
        samples.append(sample)
        if until(sample):
            return samples
        time.sleep(interval)
    last = samples[-1] if samples else None
    raise TimeoutError(
        f"{ref.name}: condition not reached in {timeout:g} s; last: gate={last and last.gate} "
        f"ready={last and last.ready} endpoint={last and last.endpoint}\n"
        f"log tail: {(last.log[-1500:] if last else '')}"
    )


def audit_events(audit_log: Path, where: Callable[[JSON], bool]) -> Iterator[JSON]:
    with audit_log.open() as stream:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if where(event):
                    yield event
