"""Every example in examples/ against the real control plane, applied as its README applies it.

For each example: its manifests follow the sidecar's conventions and the agent accepts its
configuration; `kubectl apply --dry-run=server -f examples/<name>/` passes in a fresh namespace
that enforces the "restricted" Pod Security Standard (after examples/rbac/agent-rbac.yaml, for the
examples that write); then its objects are applied for real, with the Pods bound to the hollow
node. The hollow kubelet runs no container, so the test plays the rest of the Pod: the sidecar is
the agent as a local process with the environment of the manifest's sidecar container (see
``tests.harness.manifests.LocalSidecar`` for the only substitutions), and the test does what the
legacy application would do (write its log, answer on its port, touch its heartbeat...). The
kubelet computes ``Ready`` from the gate conditions the agent writes, as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import load_settings
from tests.harness.agent import AgentProcess
from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.kube import JSON, KubeClient, condition_status, wait_for
from tests.harness.legacy_app import FakeRedis, free_port
from tests.harness.manifests import (
    SIDECAR_CONTAINER,
    Example,
    LocalSidecar,
    container_of,
    example_names,
    plain_env,
    sidecar_image,
    sidecar_of,
)
from tests.harness.workloads import (
    AGENT_RBAC_MANIFEST,
    AGENT_SA,
    PodRef,
    containers_running,
    endpoint_ready,
    wait_gate,
    wait_ready,
)

EXAMPLES = example_names()
GATE_PORT = 9779
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The agent's peak RSS is ~80 MiB in every example (measured below, on every run).
SIDECAR_RESOURCES = {"requests": {"cpu": "10m", "memory": "96Mi"}, "limits": {"memory": "128Mi"}}
DOWNWARD_API = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_UID": "metadata.uid",
}
# Every Pod of every example must pass the strictest Pod Security Standard.
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/warn=restricted",
)
StartAgent = Callable[..., AgentProcess]


# --- helpers ---------------------------------------------------------------------------------


def _pod(admin: KubeClient, ref: PodRef) -> JSON:
    return admin.pod(ref.namespace, ref.name)


def _probed_since(agent: AgentProcess, check: str, since: float) -> dict[str, Any]:
    """The first result of ``check`` from a probe that started after ``since`` (wall clock)."""

    def probe() -> dict[str, Any] | None:
        last: dict[str, Any] | None = agent.status()["checks"][check]["last"]
        if last is None or last["at"] - last["duration"] < since:
            return None
        return last

    return wait_for(f"a probe of {check}", probe, timeout=30, interval=0.1, describe=agent.describe)


def _memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match is not None, quantity
    power = {"Ki": 1, "Mi": 2, "Gi": 3}[match[2]]
    return int(match[1]) << (10 * power)


def _assert_fits_its_memory_request(agent: AgentProcess, sidecar: LocalSidecar) -> None:
    """The agent's peak RSS so far is within the sidecar container's memory request.

    The request (not only the limit): a container that uses more than it requests is among the
    first to be evicted when its node runs short of memory.
    """
    status = Path(f"/proc/{agent.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    peak = int(match[1]) * 1024
    resources = sidecar.container["resources"]
    request = _memory_bytes(resources["requests"]["memory"])
    assert _memory_bytes(resources["limits"]["memory"]) > request
    assert peak < request, (
        f"agent peak RSS {peak / 2**20:.0f} MiB >= request {request / 2**20:.0f} MiB"
    )


def _prepare_namespace(plane: ControlPlane, namespace: str, example: Example) -> None:
    """Pod Security "restricted" enforced, and the agent's RBAC as examples/rbac/README.md says."""
    plane.kubectl("label", "namespace", namespace, *RESTRICTED)
    if example.writes:
        plane.kubectl("apply", "-n", namespace, "-f", str(AGENT_RBAC_MANIFEST))


def _run_example(
    plane: ControlPlane, admin: KubeClient, namespace: str, example: Example
) -> list[JSON]:
    """Apply the example for real, its Pods bound to the hollow node; return the running Pods."""
    _prepare_namespace(plane, namespace, example)
    plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=example.on_node(NODE_NAME))
    pods: list[JSON] = []
    for owner, _ in example.workloads():
        if owner["kind"] == "Pod":
            pods.append(admin.pod(namespace, owner["metadata"]["name"]))
            continue
        selector = ",".join(f"{k}={v}" for k, v in owner["spec"]["selector"]["matchLabels"].items())
        replicas = int(owner["spec"].get("replicas", 1))

        def made(selector: str = selector, replicas: int = replicas) -> list[JSON] | None:
            items: list[JSON] = admin.get(
                f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector
            )["items"]
            return items if len(items) == replicas else None

        pods += wait_for(f"the Pods of {owner['kind']} {owner['metadata']['name']}", made)
    names = [pod["metadata"]["name"] for pod in pods]

    def running() -> bool:
        # The hollow kubelet's fake runtime runs every container and reports it ready at once;
        # the agent then sees its app container running (not ContainerNotRunning).
        return all(containers_running(admin.pod(namespace, name)) for name in names)

    wait_for(f"{', '.join(names)}: containers running", running, timeout=60)
    return [admin.pod(namespace, name) for name in names]


def _readiness_gates_column(plane: ControlPlane, ref: PodRef) -> str:
    """The READINESS GATES column of `kubectl get pod -o wide`, e.g. "1/2"."""
    out = plane.kubectl("get", "pod", ref.name, "-n", ref.namespace, "-o", "wide").stdout
    header, row = out.strip().splitlines()
    assert header.split()[-2:] == ["READINESS", "GATES"], header
    return row.split()[-1]


def _args(spec: JSON, container: str) -> str:
    """The command line of a container of the example, to tie the test to what the app does."""
    found = container_of(spec, container)
    return " ".join([*(found.get("command") or []), *(found.get("args") or [])])


class StatusPage:
    """A web application whose status page answers 200 with whatever body it is given."""

    def __init__(self, port: int, body: str) -> None:
        self.body = body
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = page.body.encode() if self.path == "/status" else b"<h1>portal</h1>\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def closing() -> Iterator[list[FakeRedis | StatusPage]]:
    """Servers a test starts; closed afterwards, whatever happened."""
    servers: list[FakeRedis | StatusPage] = []
    yield servers
    for server in servers:
        server.close()


# --- the examples as files -------------------------------------------------------------------


def test_every_example_is_exercised_here() -> None:
    # log-stdout needs a real kubelet (container logs): tests/node/test_log_stdout.py runs it.
    assert EXAMPLES == [
        "heartbeat-file",
        "log-java",
        "log-stdout",
        "multi-gate",
        "probe-only",
        "tcp-banner",
    ]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_manifests_follow_the_sidecar_conventions(name: str) -> None:
    example = Example.load(name)
    for document in example.documents:
        assert document["apiVersion"]
        assert document["metadata"]["name"]
        assert "namespace" not in document["metadata"], "`kubectl apply -n` chooses it"
    workloads = list(example.workloads())
    assert workloads
    for _, spec in workloads:
        # runAsNonRoot with an image whose user is root (busybox, tomcat, redis) makes the kubelet
        # refuse to start the container; neither the Pod Security admission nor the hollow kubelet
        # would notice, so every container names its non-root user.
        pod_user = (spec.get("securityContext") or {}).get("runAsUser")
        for container in [*spec["containers"], *(spec.get("initContainers") or [])]:
            user = (container.get("securityContext") or {}).get("runAsUser", pod_user)
            assert user not in (None, 0), f"{container['name']}: set a non-root runAsUser"
        sidecar = sidecar_of(spec)
        assert sidecar["name"] == SIDECAR_CONTAINER
        assert sidecar["image"] == sidecar_image()
        downward = {
            item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
            for item in sidecar["env"]
            if "valueFrom" in item
        }
        assert downward == DOWNWARD_API
        for key, value in SECURITY_CONTEXT.items():
            assert sidecar["securityContext"][key] == value, key
        assert sidecar["securityContext"]["runAsUser"] != 0
        assert sidecar["resources"] == SIDECAR_RESOURCES
        assert sidecar["ports"] == [{"name": "gate", "containerPort": GATE_PORT}]
        assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": GATE_PORT}

        # The agent accepts the configuration as it is written.
        settings = load_settings(plain_env(sidecar), require_api=False)
        assert settings.http_port == GATE_PORT
        readiness = sidecar["readinessProbe"]["httpGet"]
        declared = sorted(gate["conditionType"] for gate in spec.get("readinessGates") or [])
        if settings.write:
            assert spec["serviceAccountName"] == AGENT_SA
            assert spec.get("automountServiceAccountToken", True) is True
            assert None not in settings.gates, "name the gate: GATE_CONDITION_TYPE or _GATE"
            assert declared == sorted(g for g in settings.gates if g is not None)
            assert readiness == {"path": "/readyz", "port": GATE_PORT}
        else:
            assert spec["automountServiceAccountToken"] is False
            assert "serviceAccountName" not in spec
            assert declared == [], "nobody would write a readiness gate in probe-only mode"
            assert readiness == {"path": "/gate", "port": GATE_PORT}

        # Every file a check reads is on a volume the sidecar mounts read-only and another
        # container of the Pod mounts writable: the sidecar sees what the application writes.
        for check in settings.checks:
            path = getattr(check.params, "path", None)
            if path is None:
                continue
            (mount,) = [
                m
                for m in sidecar["volumeMounts"]
                if str(path).startswith(m["mountPath"].rstrip("/") + "/")
            ]
            assert mount["readOnly"] is True
            writers = [
                container["name"]
                for container in spec["containers"]
                if container is not sidecar
                for m in container.get("volumeMounts") or []
                if m["name"] == mount["name"] and not m.get("readOnly")
            ]
            assert writers, f"no container writes volume {mount['name']}"

    readme = example.readme
    for command in ("kubectl apply", "kubectl get pod", "-o wide", "kubectl describe"):
        assert command in readme, command
    if example.writes:
        assert "examples/rbac" in readme


@pytest.mark.all_versions
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_passes_server_side_dry_run_in_a_restricted_namespace(
    control_plane: ControlPlane, namespace: str, name: str
) -> None:
    example = Example.load(name)
    _prepare_namespace(control_plane, namespace, example)
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(example.directory), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # the Deployment's Pod template too
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(example.documents), result.stdout
    assert all(line.endswith(" created (server dry run)") for line in lines), result.stdout


# --- each example, run ------------------------------------------------------------------------

TOMCAT_STARTING = """\
{t} INFO [main] org.apache.catalina.startup.VersionLoggerListener.log Server version name:   \
Apache Tomcat/9.0.112
{t} INFO [main] org.apache.coyote.AbstractProtocol.init Initializing ProtocolHandler \
["http-nio-8080"]
{t} INFO [main] org.apache.catalina.startup.Catalina.load Server initialization in [812] \
milliseconds
{t} INFO [main] org.apache.catalina.core.StandardService.startInternal Starting service [Catalina]
{t} INFO [main] org.apache.catalina.startup.HostConfig.deployDirectory Deploying web application \
directory [/usr/local/tomcat/webapps/ROOT]
"""
TOMCAT_STARTED = """\
{t} INFO [main] org.apache.coyote.AbstractProtocol.start Starting ProtocolHandler ["http-nio-8080"]
{t} INFO [main] org.apache.catalina.startup.Catalina.start Server startup in [3,712] milliseconds
"""
TOMCAT_OUT_OF_MEMORY = """\
{t} SEVERE [http-nio-8080-exec-7] org.apache.catalina.core.StandardWrapperValve.invoke \
Servlet.service() for servlet [dispatcher] in context with path [] threw exception
\tjava.lang.OutOfMemoryError: Java heap space
"""


def _tomcat(lines: str) -> str:
    return lines.format(t=time.strftime("%d-%b-%Y %H:%M:%S.000"))


def test_log_java_tomcat_startup_line_opens_the_gate_and_an_out_of_memory_error_closes_it(
    control_plane: ControlPlane,
    admin: KubeClient,
    namespace: str,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    example = Example.load("log-java")
    (pod,) = _run_example(control_plane, admin, namespace, example)
    _, spec = example.only_workload()
    gate = "example.com/tomcat-ready"
    assert spec["serviceAccountName"] == AGENT_SA  # the account start_agent's token is bound to
    sidecar = LocalSidecar(spec, pod, tmp_path)
    ref = sidecar.ref
    agent = start_agent(ref, **sidecar.env())
    wait_gate(admin, ref, "False", agent, gate=gate, timeout=45)
    wait_ready(admin, ref, "False", timeout=45)

    # Tomcat writes catalina.out into its own logs directory: the file the sidecar reads.
    catalina_out = "/usr/local/tomcat/logs/catalina.out"
    assert f"> {catalina_out} 2>&1" in _args(spec, "tomcat")
    log = sidecar.host_path(catalina_out, container="tomcat")
    assert log == sidecar.host_path("/logs/catalina.out")
    log.write_text(_tomcat(TOMCAT_STARTING))
    written = time.time()
    # "Server initialization in [812] milliseconds" is not the startup line.
    assert "not seen" in _probed_since(agent, "TOMCAT", written)["detail"]
    assert condition_status(_pod(admin, ref), gate) == "False"

    with log.open("a") as out:
        out.write(_tomcat(TOMCAT_STARTED))
    passed = wait_gate(admin, ref, "True", agent, gate=gate, timeout=45)
    assert passed["reason"] == "ChecksPassed"
    assert "log TOMCAT" in passed["message"]
    wait_ready(admin, ref, "True", timeout=45)
    for waited in ("Ready", gate):  # as the README waits for them
        control_plane.kubectl(
            "wait", "-n", namespace, f"--for=condition={waited}", f"pod/{ref.name}", "--timeout=30s"
        )
    wait_for(
        "the Service's endpoint to be ready",
        lambda: endpoint_ready(admin, namespace, "legacy-tomcat", ref.name) is True,
        timeout=60,
    )

    def described() -> str | None:
        text = control_plane.kubectl("describe", "pod", ref.name, "-n", namespace).stdout
        return text if "ReadinessGateTrue" in text else None

    text = wait_for("the ReadinessGateTrue event in kubectl describe", described)
    assert re.search(rf"{re.escape(gate)}\s+True", text), text

    with log.open("a") as out:
        out.write(_tomcat(TOMCAT_OUT_OF_MEMORY))
    failed = wait_gate(admin, ref, "False", agent, gate=gate, timeout=45)
    assert failed["reason"] == "CheckFailed"
    assert "fail pattern" in failed["message"]
    wait_ready(admin, ref, "False", timeout=45)
    wait_for(
        "the Service's endpoint to be not ready",
        lambda: endpoint_ready(admin, namespace, "legacy-tomcat", ref.name) is False,
        timeout=60,
    )

    # The container restarts: its command keeps the old log and starts an empty one. The new
    # run's first line matches the start pattern: the previous run's lines no longer count.
    shutil.copy(log, log.with_name("catalina.out.previous"))
    log.write_text(_tomcat(TOMCAT_STARTING))
    written = time.time()
    restarted = _probed_since(agent, "TOMCAT", written)
    assert not restarted["ok"]
    assert "since the application started" in restarted["detail"]
    assert condition_status(_pod(admin, ref), gate) == "False"
    with log.open("a") as out:
        out.write(_tomcat(TOMCAT_STARTED))
    wait_gate(admin, ref, "True", agent, gate=gate, timeout=45)
    wait_ready(admin, ref, "True", timeout=45)
    _assert_fits_its_memory_request(agent, sidecar)


def test_tcp_banner_redis_gate_waits_for_pong_not_for_the_open_port(
    *,
    control_plane: ControlPlane,
    admin: KubeClient,
    namespace: str,
    start_agent: StartAgent,
    tmp_path: Path,
    closing: list[FakeRedis | StatusPage],
) -> None:
    example = Example.load("tcp-banner")
    (pod,) = _run_example(control_plane, admin, namespace, example)
    _, spec = example.only_workload()
    gate = "example.com/redis-ready"
    assert {"name": "redis", "containerPort": 6379} in container_of(spec, "redis")["ports"]
    port = free_port()
    sidecar = LocalSidecar(spec, pod, tmp_path, ports={6379: port})
    ref = sidecar.ref
    agent = start_agent(ref, **sidecar.env())
    wait_gate(admin, ref, "False", agent, gate=gate, timeout=45)
    wait_ready(admin, ref, "False", timeout=45)

    # Redis accepts connections while it loads its data set, and answers -LOADING: not ready.
    redis = FakeRedis(port)
    closing.append(redis)
    since = time.time()
    assert 'got "-LOADING Redis is loading' in _probed_since(agent, "REDIS", since)["detail"]
    assert condition_status(_pod(admin, ref), gate) == "False"

    redis.loading = False
    passed = wait_gate(admin, ref, "True", agent, gate=gate, timeout=45)
    assert passed["reason"] == "ChecksPassed"
    assert f"tcp REDIS: reply from 127.0.0.1:{port} matches" in passed["message"]
    wait_ready(admin, ref, "True", timeout=45)

    # Redis goes away: after the failure threshold (3 probes, the default) the gate closes.
    redis.close()
    closing.remove(redis)
    failed = wait_gate(admin, ref, "False", agent, gate=gate, timeout=45)
    assert failed["reason"] == "CheckFailed"
    assert "refused" in failed["message"]
    wait_ready(admin, ref, "False", timeout=45)
    _assert_fits_its_memory_request(agent, sidecar)


def test_heartbeat_file_each_worker_is_ready_while_its_own_heartbeat_is_fresh(
    control_plane: ControlPlane,
    admin: KubeClient,
    namespace: str,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    example = Example.load("heartbeat-file")
    pods = _run_example(control_plane, admin, namespace, example)
    owner, spec = example.only_workload()
    assert owner["kind"] == "Deployment"
    assert len(pods) == 2
    gate = "example.com/worker-alive"
    assert "touch /heartbeat/alive" in _args(spec, "worker")
    sidecars = [LocalSidecar(spec, pod, tmp_path / pod["metadata"]["name"]) for pod in pods]
    agents = [start_agent(s.ref, **s.env()) for s in sidecars]
    heartbeats = [s.host_path("/heartbeat/alive", container="worker") for s in sidecars]
    for sidecar, agent in zip(sidecars, agents, strict=True):
        waiting = wait_gate(admin, sidecar.ref, "False", agent, gate=gate, timeout=45)
        assert waiting["reason"] in {"ChecksPending", "CheckFailed"}

    # The first worker finishes a job; the second is still connecting to its queue.
    started = time.time()
    heartbeats[0].touch()
    first, second = sidecars
    passed = wait_gate(admin, first.ref, "True", agents[0], gate=gate, timeout=45)
    assert "file HEARTBEAT" in passed["message"]
    wait_ready(admin, first.ref, "True", timeout=45)
    assert "does not exist" in _probed_since(agents[1], "HEARTBEAT", started)["detail"]
    assert condition_status(_pod(admin, second.ref), "Ready") == "False"
    deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{owner['metadata']['name']}"
    wait_for(
        "the Deployment to count one ready replica",
        lambda: admin.get(deployment).get("status", {}).get("readyReplicas") == 1,
    )

    # The first worker hangs: its heartbeat gets older than CHECK_HEARTBEAT_MAX_AGE_SECONDS.
    an_hour_ago = time.time() - 3600
    os.utime(heartbeats[0], (an_hour_ago, an_hour_ago))
    stale = wait_gate(admin, first.ref, "False", agents[0], gate=gate, timeout=45)
    assert stale["reason"] == "CheckFailed"
    assert "older than 30s" in stale["message"]
    wait_ready(admin, first.ref, "False", timeout=45)

    # Both work: the rollout is complete.
    for heartbeat in heartbeats:
        heartbeat.touch()
    for sidecar, agent in zip(sidecars, agents, strict=True):
        wait_gate(admin, sidecar.ref, "True", agent, gate=gate, timeout=45)
    name = owner["metadata"]["name"]
    control_plane.kubectl(
        "rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=60s", timeout=90
    )
    for sidecar, agent in zip(sidecars, agents, strict=True):
        _assert_fits_its_memory_request(agent, sidecar)


def test_multi_gate_each_gate_has_its_own_check_and_ready_needs_both(
    *,
    control_plane: ControlPlane,
    admin: KubeClient,
    namespace: str,
    start_agent: StartAgent,
    tmp_path: Path,
    closing: list[FakeRedis | StatusPage],
) -> None:
    example = Example.load("multi-gate")
    (pod,) = _run_example(control_plane, admin, namespace, example)
    _, spec = example.only_workload()
    web_gate, data_gate = "example.com/web-ready", "example.com/data-ready"
    starting, up = '{"status": "STARTING"}', '{"status": "UP"}'
    for body in (starting, up):
        assert body in _args(spec, "web")
    port = free_port()
    page = StatusPage(port, starting + "\n")
    closing.append(page)
    sidecar = LocalSidecar(spec, pod, tmp_path, ports={8080: port})
    ref = sidecar.ref
    agent = start_agent(ref, **sidecar.env())
    for gate in (web_gate, data_gate):
        wait_gate(admin, ref, "False", agent, gate=gate, timeout=45)
    assert _readiness_gates_column(control_plane, ref) == "0/2"

    # The status page answers 200 all along; only its body says the application is up.
    waiting = _probed_since(agent, "WEB", time.time())
    assert not waiting["ok"]
    assert "body" in waiting["detail"]
    page.body = up + "\n"
    web = wait_gate(admin, ref, "True", agent, gate=web_gate, timeout=45)
    assert "http WEB" in web["message"]
    assert condition_status(_pod(admin, ref), data_gate) == "False"
    wait_ready(admin, ref, "False", timeout=45)
    assert _readiness_gates_column(control_plane, ref) == "1/2"

    # The loader writes its marker: first "loading", then "complete".
    loader_args = _args(spec, "loader")
    assert "echo loading > /data/.loaded" in loader_args
    assert 'echo "complete $(date)" > /data/.loaded' in loader_args
    marker = sidecar.host_path("/data/.loaded", container="loader")
    marker.write_text("loading\n")
    written = time.time()
    assert "does not match" in _probed_since(agent, "DATA", written)["detail"]
    marker.write_text(f"complete {time.ctime()}\n")
    data = wait_gate(admin, ref, "True", agent, gate=data_gate, timeout=45)
    assert "file DATA" in data["message"]
    wait_ready(admin, ref, "True", timeout=45)
    assert _readiness_gates_column(control_plane, ref) == "2/2"
    _assert_fits_its_memory_request(agent, sidecar)


def test_probe_only_answers_on_gate_without_any_api_access(
    control_plane: ControlPlane,
    admin: KubeClient,
    namespace: str,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    example = Example.load("probe-only")
    assert not example.writes
    (pod,) = _run_example(control_plane, admin, namespace, example)  # without examples/rbac
    _, spec = example.only_workload()
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not pod["spec"].get("readinessGates")
    sidecar = LocalSidecar(spec, pod, tmp_path)
    agent = start_agent(sidecar.ref, token=False, **sidecar.env())
    assert "KUBERNETES_SERVICE_HOST" not in agent.env
    assert "GATE_TOKEN_DIR" not in agent.env
    agent.wait_started()
    readiness = sidecar.probe_path("readinessProbe")
    assert readiness == "/gate"
    assert agent.get(sidecar.probe_path("livenessProbe"))[0] == 200
    wait_for("/readyz 200 (every check has run)", lambda: agent.get("/readyz")[0] == 200)
    assert agent.get(readiness)[0] == 503

    log_path = "/logs/app.log"
    assert f"log={log_path}" in _args(spec, "app")
    log = sidecar.host_path(log_path, container="app")
    log.write_text(f"{time.ctime()} INFO Starting Servlet engine: [Apache Tomcat/8.5.100]\n")
    with log.open("a") as out:
        out.write(f"{time.ctime()} INFO Server startup in 20013 ms\n")
    wait_for(f"{readiness} 200", lambda: agent.get(readiness)[0] == 200, describe=agent.describe)
    with log.open("a") as out:
        out.write(f"{time.ctime()} SEVERE java.lang.OutOfMemoryError: Java heap space\n")
    wait_for(f"{readiness} 503", lambda: agent.get(readiness)[0] == 503, describe=agent.describe)

    # Nothing was written anywhere: no API request at all, no condition on the Pod.
    assert not [e for e in agent.logs if str(e.get("event", "")).startswith("api_")]
    conditions = _pod(admin, sidecar.ref)["status"].get("conditions") or []
    kubelet_owned = {"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"}
    assert {c["type"] for c in conditions} <= kubelet_owned | {"PodScheduled"}
    _assert_fits_its_memory_request(agent, sidecar)
    assert agent.stop() < 2.0
    assert agent.returncode == 0
    assert json.dumps(agent.logs).count("Traceback") == 0
