"""examples/tcp-banner/redis.yaml as shipped, on the real node, with Debian's redis-server.

Only the image names change (and spec.nodeName: no scheduler runs). The sidecar's tcp check asks
PING and expects +PONG; a frozen Redis (its cgroup frozen: the port still accepts connections,
nothing answers) turns the gate False, and thawing it turns it True again.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.kube import JSON, condition, wait_for
from tests.harness.node import NODE_NAME, RealNode
from tests.harness.workloads import create_agent_rbac
from tests.node.support import container_id

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcp-banner" / "redis.yaml"
GATE = "example.com/redis-ready"


def _example(real_node: RealNode) -> list[JSON]:
    docs = [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    pod["spec"]["nodeName"] = NODE_NAME
    for container in pod["spec"]["containers"]:
        if container["image"] == "redis:7":
            container["image"] = real_node.images.redis.name
            container["imagePullPolicy"] = "Never"
        else:  # the sidecar's image keeps the example's name: the one built from ./Dockerfile
            assert container["image"] == "readiness-gate-sidecar:0.1.0"
    return docs


def _gate(plane: ControlPlane, namespace: str, status: str) -> JSON | None:
    cond = condition(plane.admin.pod(namespace, "redis-cache"), GATE)
    return cond if cond and cond["status"] == status else None


def test_the_tcp_banner_example_turns_ready_on_pong_and_not_ready_when_redis_hangs(
    control_plane: ControlPlane, real_node: RealNode, namespace: str
) -> None:
    create_agent_rbac(control_plane.admin, namespace)
    manifests = "---\n".join(yaml.safe_dump(doc) for doc in _example(real_node))
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input_text=manifests)
    ready = wait_for("the gate True", lambda: _gate(control_plane, namespace, "True"), timeout=180)
    assert ready["reason"] == "ChecksPassed"
    assert "PONG" in ready["message"] or "matched" in ready["message"], ready
    redis = container_id(control_plane.admin.pod(namespace, "redis-cache"), "redis")
    real_node.ctr("tasks", "pause", redis)  # the freezer cgroup: accepts, never answers
    try:
        hung = wait_for("the gate False", lambda: _gate(control_plane, namespace, "False"),
                        timeout=90)  # fmt: skip
        assert hung["reason"] == "CheckFailed"
    finally:
        real_node.ctr("tasks", "resume", redis)
    wait_for("the gate True again", lambda: _gate(control_plane, namespace, "True"), timeout=90)
