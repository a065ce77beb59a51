"""The kubelet's projected token, and the agent's footprint on its container's filesystem."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.helm import RELEASE, Helm, Installer
from tests.harness.kube import wait_for
from tests.harness.node import RealNode
from tests.harness.workloads import create_namespace, delete_namespace
from tests.node.support import (
    REDIS_CHECK,
    SIDECAR,
    audit_events,
    chart_values,
    container_id,
    example_pod,
    mounts,
    pod_ref,
    redis_container,
    render_example,
    sample_until,
)

SERVICE_ACCOUNT = f"system:serviceaccount:%s:readiness-gate-sidecar-{RELEASE}"
TOKEN = "/run/secrets/kubernetes.io/serviceaccount/token"  # /var/run -> /run in the image


def _deploy(
    plane: ControlPlane, node: RealNode, helm: Helm, work: Path, **overrides: object
) -> tuple[str, Installer, str]:
    namespace = create_namespace(plane)
    installer = Installer(plane)
    values = chart_values(native=False, checks={"APP": REDIS_CHECK}, **overrides)
    manifests, _ = render_example(helm, namespace, values, work, redis_container(node))
    installer.apply(manifests)
    ref = pod_ref(example_pod(plane.admin, namespace))
    sample_until(plane.admin, ref, log=work / "none", service=None,
                 until=lambda s: s.gate == "True", timeout=180)  # fmt: skip
    return namespace, installer, ref.name


def _jti(node: RealNode, pid: int) -> str:
    payload = Path(f"/proc/{pid}/root{TOKEN}").read_text().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    jti: str = claims["jti"]
    return jti


def _agent_pid(plane: ControlPlane, node: RealNode, namespace: str, pod: str) -> int:
    pids = node.container_pids(container_id(plane.admin.pod(namespace, pod), SIDECAR))
    assert pids
    return pids[0]


def _used(plane: ControlPlane, namespace: str, pod: str, jti: str) -> bool:
    user = SERVICE_ACCOUNT % namespace
    return any(
        audit_events(
            plane.workdir / "audit.log",
            lambda e: (
                e.get("user", {}).get("username") == user
                and e.get("objectRef", {}).get("name") == pod
                and e.get("user", {})
                .get("extra", {})
                .get("authentication.kubernetes.io/credential-id")
                == [f"JTI={jti}"]
            ),
        )
    )


def test_a_token_the_kubelet_rotates_is_picked_up(
    control_plane: ControlPlane, real_node: RealNode, helm: Helm, tmp_path: Path
) -> None:
    """The kubelet writes a new token into the projected volume when it requests a new one: on its
    own at 80 % of the token's lifetime (48 min for the default 3607 s; see the slow test), and
    at once after a kubelet restart, whose token cache starts empty. The agent's next requests
    (a resync every 2 s) carry the new token."""
    namespace, installer, pod = _deploy(
        control_plane, real_node, helm, tmp_path, gate={"resyncSeconds": 2}
    )
    try:
        pid = _agent_pid(control_plane, real_node, namespace, pod)
        first = _jti(real_node, pid)
        wait_for(
            "a request with the first token", lambda: _used(control_plane, namespace, pod, first)
        )
        real_node.restart_kubelet()
        second = wait_for(
            "the kubelet to write a new token",
            lambda: (jti := _jti(real_node, pid)) != first and jti,
            timeout=120,
        )
        wait_for("a request with the new token",
                 lambda: _used(control_plane, namespace, pod, str(second)), timeout=90)  # fmt: skip
    finally:
        delete_namespace(control_plane, namespace)
        installer.cleanup()


@pytest.mark.skipif(
    os.environ.get("READINESS_GATE_SLOW_TESTS") != "1",
    reason="opt-in (READINESS_GATE_SLOW_TESTS=1): waits ~9 min for the kubelet's own refresh",
)
def test_the_kubelets_own_refresh_of_a_600_s_token_is_picked_up(
    control_plane: ControlPlane, real_node: RealNode, helm: Helm, tmp_path: Path
) -> None:
    """600 s is the API's minimum expirationSeconds; the kubelet refreshes at 80 % of it (minus
    up to 10 s of jitter), and the volume is rewritten on the Pod's next sync (10 s here)."""
    volume = {
        "name": "short-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ]
        },
    }
    container = {
        "extraEnv": [{"name": "GATE_TOKEN_DIR", "value": "/short-token"}],
        "volumeMounts": [{"name": "short-token", "mountPath": "/short-token", "readOnly": True}],
    }
    namespace = create_namespace(control_plane)
    installer = Installer(control_plane)
    try:
        values = chart_values(native=False, checks={"APP": REDIS_CHECK},
                              gate={"resyncSeconds": 5}, container=container)  # fmt: skip
        manifests, _ = render_example(helm, namespace, values, tmp_path, redis_container(real_node))
        manifests = manifests.replace(
            "      volumes:\n", "      volumes:\n" + _yaml_item(volume), 1
        )
        installer.apply(manifests)
        ref = pod_ref(example_pod(control_plane.admin, namespace))
        sample_until(control_plane.admin, ref, log=tmp_path / "none", service=None,
                     until=lambda s: s.gate == "True", timeout=180)  # fmt: skip
        pid = _agent_pid(control_plane, real_node, namespace, ref.name)
        path = Path(f"/proc/{pid}/root/short-token/token")
        first, started = path.read_text(), time.monotonic()
        wait_for(
            "the kubelet's refresh", lambda: path.read_text() != first, timeout=600, interval=1
        )
        refreshed_after = time.monotonic() - started
        payload = path.read_text().split(".")[1]
        jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        wait_for("a request with the refreshed token",
                 lambda: _used(control_plane, namespace, ref.name, jti), timeout=60)  # fmt: skip
        assert refreshed_after < 600
    finally:
        delete_namespace(control_plane, namespace)
        installer.cleanup()


def _yaml_item(volume: Mapping[str, object]) -> str:
    text = yaml.safe_dump([volume])
    return "".join(f"      {line}\n" for line in text.splitlines())


def test_the_agent_writes_nothing_outside_its_mounts(
    control_plane: ControlPlane, real_node: RealNode, helm: Helm, tmp_path: Path
) -> None:
    """With a writable root filesystem, after the agent has run its checks, written its gate and
    served its endpoints, its container's overlay upper directory holds nothing but the empty
    mount points runc created: the image needs no writable path at all."""
    namespace, installer, pod = _deploy(
        control_plane, real_node, helm, tmp_path,
        container={"securityContext": {"readOnlyRootFilesystem": False, "runAsNonRoot": True,
                                       "runAsUser": 65532, "runAsGroup": 65532,
                                       "allowPrivilegeEscalation": False,
                                       "capabilities": {"drop": ["ALL"]},
                                       "seccompProfile": {"type": "RuntimeDefault"}}},
    )  # fmt: skip
    try:
        pid = _agent_pid(control_plane, real_node, namespace, pod)
        control_plane.kubectl("-n", namespace, "exec", pod, "-c", SIDECAR, "--",
                              "readiness-gate-sidecar", "check")  # fmt: skip
        time.sleep(3)  # a few more probe periods (1 s) and resyncs
        found = mounts(pid)
        root = found["/"]
        assert root[0] == "overlay"
        assert "rw" in root[1].split(","), root
        upper = next(o for o in root[2].split(",") if o.startswith("upperdir=")).split("=", 1)[1]
        upper_dir = real_node.node_path(upper)
        targets = {Path(p) for p in found}
        written = []
        for path in upper_dir.rglob("*"):
            inside = Path("/") / path.relative_to(upper_dir)
            is_stub = inside in targets or any(t.is_relative_to(inside) for t in targets)
            if not is_stub or (path.is_file() and path.stat().st_size > 0):
                written.append(str(inside))
        assert not written, f"the agent wrote {written}"
    finally:
        delete_namespace(control_plane, namespace)
        installer.cleanup()
