"""The chart's sidecar beside a real Tomcat, in real containers under a real kubelet.

The Deployment, Service, ServiceAccount, Role and admission policy are ``helm template`` of
``chart/`` with the example workload on; only the stand-in app becomes Debian's Tomcat 10, which
appends its console output to catalina.out on the shared emptyDir. The agent runs from the image
built from ./Dockerfile, as a regular container and as a native sidecar.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.cluster import ControlPlane
from tests.harness.helm import RELEASE, Helm, Installer
from tests.harness.images import agent_version
from tests.harness.kube import JSON, condition
from tests.harness.node import SERVICE_IP, RealNode
from tests.harness.workloads import GATE, PodRef, create_namespace, delete_namespace
from tests.node.support import (
    SIDECAR,
    TOMCAT_PATTERN,
    Sample,
    audit_events,
    chart_values,
    container_id,
    container_status,
    emptydir_file,
    example_pod,
    mounts,
    pod_ref,
    proc_environ,
    proc_status,
    render_example,
    sample_until,
    tomcat_container,
)

SERVICE = f"{RELEASE}-readiness-gate-sidecar-example"
SERVICE_ACCOUNT = f"readiness-gate-sidecar-{RELEASE}"


@dataclass(frozen=True, slots=True)
class Deployed:
    native: bool
    namespace: str
    ref: PodRef
    template: JSON
    samples: list[Sample]

    def pod(self, plane: ControlPlane) -> JSON:
        return plane.admin.pod(self.ref.namespace, self.ref.name)


@pytest.fixture(scope="module", params=[False, True], ids=["container", "native-sidecar"])
def tomcat(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    real_node: RealNode,
    helm: Helm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    """The chart's example with Tomcat, observed from creation until its endpoint is ready."""
    native = bool(request.param)
    namespace = create_namespace(control_plane)
    installer = Installer(control_plane)
    try:
        manifests, template = render_example(
            helm, namespace, chart_values(native=native), tmp_path_factory.mktemp("chart"),
            tomcat_container(real_node),
        )  # fmt: skip
        installer.apply(manifests)
        pod = example_pod(control_plane.admin, namespace)
        ref = pod_ref(pod)
        samples = sample_until(
            control_plane.admin,
            ref,
            log=emptydir_file(real_node, pod, "logs", "catalina.out"),
            service=SERVICE,
            until=lambda s: s.gate == "True" and s.ready == "True" and s.endpoint is True,
            timeout=240,
        )
        yield Deployed(native, namespace, ref, template, samples)
    finally:
        delete_namespace(control_plane, namespace)
        installer.cleanup()


def test_the_gate_turns_true_only_after_tomcats_own_startup_line(tomcat: Deployed) -> None:
    first_true = next(i for i, s in enumerate(tomcat.samples) if s.gate == "True")
    line = re.search(rf".*{TOMCAT_PATTERN}.*", tomcat.samples[first_true].log)
    assert line, "the gate was True before Tomcat logged its startup line"
    assert "org.apache.catalina.startup.Catalina" in line.group(0)  # Tomcat's own line
    before = tomcat.samples[:first_true]
    # Tomcat was starting (its log growing, without the line yet) and the Pod was not Ready.
    # (The gate may still be missing then, which counts as False: the agent, a Python process on a
    # busy machine, can take seconds to start while the JVM takes the CPU.)
    starting = [s for s in before if s.log and not re.search(TOMCAT_PATTERN, s.log)]
    assert starting, "no observation of Tomcat's log before its startup line"
    assert all(s.gate != "True" and s.ready != "True" for s in before)
    assert all(s.endpoint is not True for s in before)
    assert tomcat.samples[-1].endpoint is True  # the Service's endpoint followed


def test_the_agent_runs_from_the_built_image_as_the_chart_renders_it(
    tomcat: Deployed, control_plane: ControlPlane, real_node: RealNode
) -> None:
    spec = tomcat.template["spec"]
    rendered = [*spec.get("initContainers", []), *spec["containers"]]
    (sidecar,) = [c for c in rendered if c["name"] == SIDECAR]
    assert sidecar["image"] == f"readiness-gate-sidecar:{agent_version()}"  # the chart's default
    assert (sidecar.get("restartPolicy") == "Always") is tomcat.native
    pod = tomcat.pod(control_plane)
    status = container_status(pod, SIDECAR)
    assert status["image"] == real_node.images.agent.name
    pids = real_node.container_pids(container_id(pod, SIDECAR))
    assert pids, "no process in the agent container's cgroup"
    for pid in pids:
        proc = proc_status(pid)
        assert proc["Uid"].split() == ["65532"] * 4
        assert proc["Gid"].split() == ["65532"] * 4
        assert proc["CapEff"] == "0000000000000000"
        assert proc["NoNewPrivs"] == "1"
    env = proc_environ(pids[0])
    assert env["POD_NAME"] == tomcat.ref.name  # the downward API
    assert env["POD_NAMESPACE"] == tomcat.namespace
    assert env["POD_UID"] == tomcat.ref.uid
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (SERVICE_IP, "443")
    found = mounts(pids[0])
    assert "ro" in found["/"][1].split(","), found["/"]  # readOnlyRootFilesystem
    token_dir = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run -> /run in Debian's image
    assert found[token_dir][0] == "tmpfs"
    assert "ro" in found[token_dir][1].split(",")
    assert found["/logs"][1].split(",")[0] == "ro"  # Tomcat's log directory, read-only
    if tomcat.native:
        app = container_status(pod, "app")
        assert status["state"]["running"]["startedAt"] <= app["state"]["running"]["startedAt"]


def _token_claims(real_node: RealNode, pid: int) -> JSON:
    token = Path(f"/proc/{pid}/root/run/secrets/kubernetes.io/serviceaccount/token").read_text()
    payload = token.split(".")[1]
    claims: JSON = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_the_agent_writes_with_its_kubelet_mounted_token_through_the_service_ip(
    tomcat: Deployed, control_plane: ControlPlane, real_node: RealNode
) -> None:
    """The PATCHes come from the Pod's address (10.96.0.1 DNAT'ed, as kube-proxy would) with the
    token the kubelet mounted: bound to this Pod, and accepted by the Role and the policy."""
    pod = tomcat.pod(control_plane)
    pid = real_node.container_pids(container_id(pod, SIDECAR))[0]
    claims = _token_claims(real_node, pid)
    assert claims["kubernetes.io"]["pod"]["name"] == tomcat.ref.name
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == SERVICE_ACCOUNT
    user = f"system:serviceaccount:{tomcat.namespace}:{SERVICE_ACCOUNT}"
    patches = list(
        audit_events(
            control_plane.workdir / "audit.log",
            lambda e: (
                e.get("verb") == "patch"
                and e.get("objectRef", {}).get("subresource") == "status"
                and e.get("objectRef", {}).get("name") == tomcat.ref.name
                and e.get("user", {}).get("username") == user
                and e.get("stage") == "ResponseComplete"
            ),
        )
    )
    assert patches, f"no status PATCH of the Pod by {user} in the audit log"
    for event in patches:
        extra = event["user"]["extra"]
        assert extra["authentication.kubernetes.io/pod-name"] == [tomcat.ref.name]
        assert extra["authentication.kubernetes.io/credential-id"] == [f"JTI={claims['jti']}"]
        assert event["sourceIPs"] == [pod["status"]["podIP"]]
        assert event["responseStatus"]["code"] == 200
    gate = condition(pod, GATE)
    assert gate is not None
    assert gate["reason"] == "ChecksPassed"


def test_kubectl_logs_of_the_agent_shows_its_json_lines(
    tomcat: Deployed, control_plane: ControlPlane
) -> None:
    result = control_plane.kubectl("-n", tomcat.namespace, "logs", tomcat.ref.name, "-c", SIDECAR)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    events = [entry["event"] for entry in entries]
    assert events[0] == "agent_started"
    assert "pod_synced" in events
    written = [e for e in entries if e["event"] == "gate_written"]
    assert written
    assert written[-1]["status"] == "True", written


def test_kubectl_exec_reaches_the_agent_container(
    tomcat: Deployed, control_plane: ControlPlane
) -> None:
    """The API server reaches the kubelet (exec) and the image needs nothing writable."""
    result = control_plane.kubectl(
        "-n", tomcat.namespace, "exec", tomcat.ref.name, "-c", SIDECAR, "--",
        "python3", "-c", "import os; open('/probe', 'w')",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    check = control_plane.kubectl(
        "-n", tomcat.namespace, "exec", tomcat.ref.name, "-c", SIDECAR, "--",
        "readiness-gate-sidecar", "check", check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"gate {GATE}: True" in check.stdout
