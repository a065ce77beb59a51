"""A real node next to the control plane: kubelet + containerd + runc + CNI, leaving nothing behind.

The hollow node (kubemark) runs real kubelet code with a fake runtime; this one runs containers.

Isolation (everything is undone when the harness stops, also when it is killed):
- A *holder* process owns a private mount namespace (made rshared inside, for volume propagation)
  with tmpfs on ``/run``, ``/var/lib``, ``/var/log`` and ``/tmp``, and ``/var/lib/containerd`` bound
  to the run's work directory: every fixed path the kubelet, containerd and the CNI plugins write
  (``/var/lib/kubelet``, ``/var/lib/cni``, ``/run/containerd``, ``/var/log/pods``...) is private.
- The holder is also the init of a private PID namespace (the static ``pause`` program, which
  reaps orphans): containerd and the kubelet run in it (``nsenter``), and so do the shims, runc
  and every container. The holder dies with the harness (PR_SET_PDEATHSIG, like every other
  component), and the kernel kills everything in its PID namespace with it.
- Network: the harness's private network namespace (``netns``). Pods get addresses from a CNI
  bridge; the ``kubernetes`` Service's ClusterIP reaches the API server through one iptables DNAT
  rule (no kube-proxy runs), so a Pod talks to the API server exactly as in a cluster:
  ``KUBERNETES_SERVICE_HOST``/``PORT`` injected by the kubelet, the kubelet-mounted ``ca.crt``.
- cgroups (v1 here; the kubelet needs ``failCgroupV1: false``): a dedicated ``cgroupRoot`` in every
  hierarchy, removed depth-first after the processes are gone. The kernel settings the kubelet
  changes (``vm.overcommit_memory``, ``kernel.panic``...) are restored on stop.
- Ports: the kubelet serves on 10350 (kubemark holds 0.0.0.0:10250 in the same namespace).

No kube-scheduler runs: Pods name the node in ``spec.nodeName`` (``NODE_NAME``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tests.harness import netns
from tests.harness.binaries import cache_root
from tests.harness.cluster import APISERVER_PORT, Component, ControlPlane, HarnessError
from tests.harness.images import Images, ensure_images
from tests.harness.kube import ApiError, condition_status, wait_for
from tests.harness.nodebuild import CNI_BIN_DIR, RUNC, NodeBinaries, ensure_node_binaries

NODE_NAME = "real-node-0"
KUBELET_PORT = 10350
KUBELET_HEALTHZ_PORT = 10348
#: The kubelet rotates a container's log once it is this big (checked every 3 s).
CONTAINER_LOG_MAX_SIZE = "1Mi"
POD_SUBNET = "10.244.0.0/24"
SERVICE_IP = (
    "10.96.0.1"  # the `kubernetes` Service: the first address of --service-cluster-ip-range
)
CGROUP_FS = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "readiness-gate-sidecar-node-"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI
# What the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables) and never puts back.
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
START_TIMEOUT = 120.0


class NodeUnavailableError(HarnessError):
    """The real node cannot run on this machine; the message says why."""


def unavailable_reason() -> str | None:
    """Why a real node cannot start here, or None (checked before anything is built)."""
    if os.geteuid() != 0:
        return "the real node needs root (mount and PID namespaces, cgroups, iptables)"
    if not CGROUP_FS.is_dir() or not any(CGROUP_FS.iterdir()):
        return f"no cgroup filesystem at {CGROUP_FS}"
    if not Path("/proc/self/ns/pid_for_children").exists():
        return "the kernel lacks PID namespaces"
    return None


# --- namespaces ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeNamespaces:
    """The holder's mount, PID and network namespaces, by the PID of its init."""

    pid: int

    def command(self, argv: list[str], *, pid: bool = True) -> list[str]:
        """``argv`` inside the node: its mounts and network, and (``pid``) its PID namespace.

        A process that only had its children's PID namespace set (setns) could not start
        threads; nsenter forks, so the command itself is a member of the namespace.
        """
        kinds = ["--mount", "--net", *(["--pid"] if pid else [])]
        return ["nsenter", f"--target={self.pid}", *kinds, "--wd=/", "--", *argv]

    def path(self, inside: str) -> Path:
        """A path of the node's mount namespace, seen from the harness."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")


@dataclass(slots=True)
class NodeComponent(Component):
    """A component that runs inside the node (``argv`` is wrapped once the holder is up).

    Stopping waits for the whole process group (nsenter and the command it forked): nsenter
    itself exits at once on SIGTERM, the command takes its time to shut down.
    """

    command: list[str] = field(default_factory=list)

    def enter(self, namespaces: NodeNamespaces) -> None:
        self.argv = namespaces.command(self.command)

    def stop(self, grace: float = 5.0) -> None:
        proc = self.process
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        proc.wait(5)
        self.process = None


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap nsenter itself
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the node ------------------------------------------------------------------------------------


class RealNode:
    """A running real node. Use ``with RealNode.started(plane) as node:``."""

    def __init__(
        self,
        plane: ControlPlane,
        binaries: NodeBinaries,
        images: Images,
        workdir: Path,
        *,
        log: TextIO = sys.stderr,
    ) -> None:
        self.plane = plane
        self.binaries = binaries
        self.images = images
        self.workdir = workdir
        self._log = log
        self.cgroup_root = f"{CGROUP_PREFIX}{os.getpid()}"
        self.namespaces: NodeNamespaces | None = None
        self._sysctls: dict[str, str] = {}
        self._created_cgroups: list[Path] = []
        self.timings: dict[str, float] = {}
        self.holder = Component("node-holder", self._holder_argv(), workdir / "node-holder.log")
        self.containerd = NodeComponent(
            "containerd",
            [],
            workdir / "containerd.log",
            env={**os.environ, "PATH": f"{binaries.containerd_dir}:{os.environ.get('PATH', '')}"},
            command=[str(binaries.containerd), f"--config={self._containerd_config()}"],
        )
        self.kubelet = NodeComponent(
            "kubelet", [], workdir / "kubelet.log", command=self._kubelet_argv()
        )

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def started(
        cls, plane: ControlPlane, *, log: TextIO = sys.stderr, keep_workdir: bool = False
    ) -> Iterator[RealNode]:
        """Build (or reuse) the binaries and images, start the node, yield it, stop it."""
        reason = unavailable_reason()
        if reason:
            raise NodeUnavailableError(reason)
        binaries = ensure_node_binaries(log)
        images = ensure_images(log)
        base = cache_root() / "run"
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="node-", dir=base))
        node = cls(plane, binaries, images, workdir, log=log)
        try:
            node.start()
            yield node
        finally:
            node.stop()
            if not keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def start(self) -> None:
        started = time.monotonic()
        _sweep_stale_cgroups()
        self._sysctls = _read_sysctls()
        self._create_cgroup_root()
        self._start_holder()
        self._start(self.containerd, self._containerd_ready)
        self._mark("containerd", started)
        self._import_images()
        self._mark("images imported", started)
        self._route_service_ip()
        self._start(self.kubelet, self._node_ready)
        self._mark("node Ready", started)
        self._say(
            f"real node {NODE_NAME} up in {time.monotonic() - started:.1f} s ({self.workdir})"
        )

    def stop(self) -> None:
        try:
            if self.kubelet.running:
                self._delete_pods()
            self.kubelet.stop(grace=10)
            if self.containerd.running:
                self._remove_leftover_tasks()
            self.containerd.stop(grace=10)
        finally:
            self.holder.stop(grace=5)  # its PID namespace, and whatever is left in it, dies
            self._remove_cgroups()
            _write_sysctls(self._sysctls)

    def restart_kubelet(self) -> None:
        self.kubelet.stop(grace=10)
        self._start(self.kubelet, self._node_ready)

    def rss(self) -> dict[str, int]:
        return {
            "kubelet": self.kubelet.rss_bytes(),
            "containerd": self.containerd.rss_bytes(),
            "node-holder": self.holder.rss_bytes(),
        }

    # --- helpers for tests ------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """``ctr -n k8s.io ARGS`` against the node's containerd."""
        assert self.namespaces is not None
        argv = [
            str(self.binaries.ctr),
            f"--address={CONTAINERD_SOCKET}",
            "-n",
            K8S_NAMESPACE,
            *args,
        ]
        result = subprocess.run(
            self.namespaces.command(argv, pid=False),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise HarnessError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def task_ids(self) -> list[str]:
        return self.ctr("tasks", "ls", "-q").split()

    def container_pids(self, container_id: str) -> list[int]:
        """The host PIDs of a container's processes (from its cgroup, so in our PID namespace)."""
        memory = CGROUP_FS / "memory" / self.cgroup_root
        for procs in memory.rglob(f"{container_id}/cgroup.procs"):
            return [int(pid) for pid in procs.read_text().split()]
        return []

    def node_path(self, inside: str) -> Path:
        """A path of the node's mount namespace (``/var/lib/kubelet/...``), seen from here."""
        assert self.namespaces is not None
        return self.namespaces.path(inside)

    # --- internals: processes ---------------------------------------------------------------

    def _holder_argv(self) -> list[str]:
        containerd_root = self.workdir / "containerd-root"
        containerd_root.mkdir()
        ready = self.workdir / "holder.ready"
        setup = " && ".join(
            [
                "mount -t tmpfs -o mode=755,size=256m tmpfs /run",
                "mount -t tmpfs -o mode=755,size=2g tmpfs /var/lib",
                "mount -t tmpfs -o mode=755,size=512m tmpfs /var/log",
                "mount -t tmpfs -o mode=1777,size=512m tmpfs /tmp",
                "mkdir /var/lib/containerd",
                f"mount --bind {containerd_root} /var/lib/containerd",
                "mount --make-rshared /",
                f"touch {ready}",
                f"exec {self.images.pause_binary}",
            ]
        )
        return [
            "unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc",
            "--propagation", "private", "--", "/bin/sh", "-c", setup,
        ]  # fmt: skip

    def _start_holder(self) -> None:
        self.holder.start()
        ready = self.workdir / "holder.ready"
        assert self.holder.process is not None
        unshare = self.holder.process.pid

        def init_pid() -> int | None:
            if not self.holder.running:
                raise HarnessError(f"the node's holder exited:\n{self.holder.tail()}")
            children = Path(f"/proc/{unshare}/task/{unshare}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids and ready.exists():
                    return int(pids[0])
            return None

        pid = wait_for("the node's namespaces", init_pid, timeout=30)
        self.namespaces = NodeNamespaces(pid)
        self.containerd.enter(self.namespaces)
        self.kubelet.enter(self.namespaces)

    def _start(self, component: Component, ready: Callable[[], bool]) -> None:
        component.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if not component.running:
                raise HarnessError(f"{component.name} exited during start-up:\n{component.tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{component.name} not ready after {START_TIMEOUT:g} s:\n{component.tail()}"
                )
            time.sleep(0.2)

    def _containerd_ready(self) -> bool:
        if not self.node_path(CONTAINERD_SOCKET).exists():
            return False
        return "cri" in self.ctr("plugins", "ls", check=False)

    def _node_ready(self) -> bool:
        try:
            node = self.plane.admin.get(f"/api/v1/nodes/{NODE_NAME}")
        except (ApiError, OSError):
            return False
        return condition_status(node, "Ready") == "True"

    def _import_images(self) -> None:
        for image in self.images.for_node():
            self.ctr("images", "import", "--local", str(image.archive), timeout=600)
        names = set(self.ctr("images", "ls", "-q").split())
        missing = [i.name for i in self.images.for_node() if i.name not in names]
        if missing:
            raise HarnessError(f"containerd did not import {missing}; it has {sorted(names)}")

    def _route_service_ip(self) -> None:
        """The `kubernetes` Service's ClusterIP, as kube-proxy would route it: DNAT to the API
        server on the node's address (the API server listens on every address of the namespace)."""
        target = f"{netns.NODE_IP}:{APISERVER_PORT}"
        match = ["-d", f"{SERVICE_IP}/32", "-p", "tcp", "--dport", "443"]
        for chain in ("PREROUTING", "OUTPUT"):
            rule = [chain, *match, "-j", "DNAT", "--to-destination", target]
            present = ["iptables", "-t", "nat", "-C", *rule]
            if subprocess.run(present, capture_output=True, check=False).returncode:
                subprocess.run(
                    ["iptables", "-t", "nat", "-A", *rule], check=True, capture_output=True
                )

    def _delete_pods(self) -> None:
        """Delete every Pod bound to this node and wait until the kubelet has stopped them."""
        admin = self.plane.admin
        selector = {"fieldSelector": f"spec.nodeName={NODE_NAME}"}
        with contextlib.suppress(ApiError, OSError):
            for pod in admin.get("/api/v1/pods", **selector).get("items", []):
                meta = pod["metadata"]
                with contextlib.suppress(ApiError):
                    admin.delete(
                        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        gracePeriodSeconds="2",
                    )
            with contextlib.suppress(TimeoutError):
                wait_for(
                    f"the Pods on {NODE_NAME} to be gone",
                    lambda: not admin.get("/api/v1/pods", **selector).get("items"),
                    timeout=60,
                    interval=0.5,
                )
        with contextlib.suppress(TimeoutError, HarnessError):
            wait_for(
                "containerd's tasks to end", lambda: not self.task_ids(), timeout=30, interval=0.5
            )

    def _remove_leftover_tasks(self) -> None:
        leftovers = self.task_ids()
        if not leftovers:
            return
        self._say(f"killing {len(leftovers)} container(s) the kubelet left: {leftovers}")
        for task in leftovers:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        with contextlib.suppress(TimeoutError):
            wait_for("the tasks to die", lambda: not self.task_ids(), timeout=15, interval=0.5)
        for task in self.task_ids():
            self.ctr("tasks", "delete", "--force", task, check=False)

    # --- internals: configuration -----------------------------------------------------------

    def _containerd_config(self) -> Path:
        cni = self.workdir / "cni"
        cni.mkdir()
        (cni / "10-pods.conflist").write_text(json.dumps(_cni_config(), indent=2) + "\n")
        path = self.workdir / "containerd.toml"
        path.write_text(
            f"""version = 3
root = '/var/lib/containerd'
state = '/run/containerd'
# What a node for these tests does not need: other snapshotters, NRI, tracing, /opt/containerd.
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs',
  'io.containerd.mount-handler.v1.erofs', 'io.containerd.nri.v1.nri',
  'io.containerd.internal.v1.opt', 'io.containerd.image-verifier.v1.bindir',
  'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing',
]

[grpc]
  address = '{CONTAINERD_SOCKET}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{self.images.pause.name}'

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: runc could not write the sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{CNI_BIN_DIR}']
    conf_dir = '{cni}'
    max_conf_num = 1
"""
        )
        return path

    def _kubelet_argv(self) -> list[str]:
        pki = self.plane.pki
        client = pki.issue("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        serving = pki.issue(
            "kubelet-serving", f"/CN={NODE_NAME}", server_sans=f"IP:{netns.NODE_IP},DNS:{NODE_NAME}"
        )
        kubeconfig = pki.kubeconfig(
            self.workdir / "kubelet.kubeconfig",
            f"https://127.0.0.1:{APISERVER_PORT}",
            "kubelet",
            client,
        )
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("")  # Pods need no DNS here; nothing of the machine's leaks in
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "0.0.0.0",  # of the private network namespace
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True, "cacheTTL": "10s"},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {
                "mode": "Webhook",
                "webhook": {"cacheAuthorizedTTL": "10s", "cacheUnauthorizedTTL": "5s"},
            },
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_root}",
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "resolvConf": str(resolv),
            "clusterDomain": "cluster.local",
            "volumePluginDir": "/var/lib/kubelet/volume-plugins",
            # Volume contents (the projected token) are refreshed on each Pod sync.
            "syncFrequency": "10s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 30,
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "shutdownGracePeriod": "0s",
            # Small container logs, checked often: a test can make the kubelet rotate a log by
            # writing a few MiB (the defaults are 10Mi and 10s).
            "containerLogMaxSize": CONTAINER_LOG_MAX_SIZE,
            "containerLogMaxFiles": 3,
            "containerLogMonitorInterval": "3s",
        }
        path = self.workdir / "kubelet.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return [
            str(self.binaries.kubelet),
            f"--config={path}",
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={netns.NODE_IP}",
            "--root-dir=/var/lib/kubelet",
            "--cert-dir=/var/lib/kubelet/pki",
            "--v=1",
        ]

    # --- internals: cgroups -----------------------------------------------------------------

    def _create_cgroup_root(self) -> None:
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / self.cgroup_root
            path.mkdir(exist_ok=True)
            self._created_cgroups.append(path)
            for name in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 cpuset cgroup
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((hierarchy / name).read_text())

    def _remove_cgroups(self) -> None:
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / self.cgroup_root
            if root.is_dir():
                _remove_cgroup_tree(root)
        left = [str(p) for p in self._created_cgroups if p.exists()]
        if left:
            self._say(f"WARNING: could not remove cgroups {left}")

    def _mark(self, what: str, started: float) -> None:
        self.timings[what] = round(time.monotonic() - started, 2)

    def _say(self, message: str) -> None:
        print(f"[node] {message}", file=self._log, flush=True)


def _cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "rgs-cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": "/var/lib/cni/networks",
                },
            }
        ],
    }


def _cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, v1 named ones, and a v2 ``unified``)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in {"cgroup", "cgroup2"}:
            mount_point = Path(left.split()[4])
            if mount_point.is_relative_to(CGROUP_FS):
                found.append(mount_point)
    return found


def _remove_cgroup_tree(root: Path, timeout: float = 30) -> None:
    """rmdir depth-first; a cgroup with processes still exiting is retried, then killed."""
    deadline = time.monotonic() + timeout
    while root.exists():
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*dirs, root]:
            with contextlib.suppress(OSError):
                path.rmdir()
        if not root.exists():
            return
        if time.monotonic() > deadline:
            return
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)


def _sweep_stale_cgroups() -> None:
    """Remove empty cgroup roots of earlier runs whose harness process is gone."""
    for hierarchy in _cgroup_hierarchies():
        for path in hierarchy.glob(f"{CGROUP_PREFIX}*"):
            pid = path.name.removeprefix(CGROUP_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                _remove_cgroup_tree(path, timeout=2)


def _read_sysctls() -> dict[str, str]:
    values = {}
    for name in KUBELET_SYSCTLS:
        path = Path("/proc/sys") / name.replace(".", "/")
        with contextlib.suppress(OSError):
            values[name] = path.read_text().strip()
    return values


def _write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        path = Path("/proc/sys") / name.replace(".", "/")
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value + "\n")


def main() -> None:
    """A control plane and a real node until Ctrl-C: ``python -m tests.harness.node``."""
    with ControlPlane.started() as plane, RealNode.started(plane) as node:
        print(f"KUBECONFIG={plane.kubeconfig}  (inside this process's network namespace)")
        for name, value in {**plane.rss(), **node.rss()}.items():
            print(f"  {name:<24} {value / 2**20:7.1f} MiB")
        print(f"  timings: {node.timings}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
