"""Start and stop a real, private Kubernetes control plane.

etcd, kube-apiserver (Node,RBAC authorization, default admission plugins including
ValidatingAdmissionPolicy), kube-controller-manager and one kubemark hollow node (the real kubelet
code with a fake container runtime). Everything runs inside a private network namespace that the
calling process enters first (see ``netns.enter_private_network``): every port — including the
hollow kubelet's unconditional ``0.0.0.0:10250`` — is invisible outside it, so fixed well-known
ports are safe, and nothing can stay bound after the last process exits. The hollow node also gets
a private mount namespace with its own ``/tmp``, where it writes its files and sockets.

Each component's output goes to ``<workdir>/<name>.log``; a failed start quotes its tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tests.harness import netns
from tests.harness.binaries import Binaries, cache_root, ensure_kubernetes
from tests.harness.kube import ApiError, Credentials, KubeClient, condition_status, wait_for
from tests.harness.pki import SA_ISSUER, Pki

APISERVER_PORT = 6443
ETCD_PORT = 2379
NODE_NAME = "hollow-node-0"
SERVER = f"https://127.0.0.1:{APISERVER_PORT}"
START_TIMEOUT = 90.0
_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the harness process dies first."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(slots=True)
class Component:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - async-signal-safe prctl only
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(5)
        self._signal(signal.SIGKILL)  # whatever is left of its process group
        self.process = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.log} does not exist)"
        return "\n".join(text[-lines:])

    def rss_bytes(self) -> int:
        if not self.running:
            return 0
        assert self.process is not None
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


def _process_tree(root: int) -> list[int]:
    pids = [root]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{root}/task/{root}/children").read_text().split():
            pids += _process_tree(int(child))
    return pids


class ControlPlane:
    """A running control plane. Use ``with ControlPlane.started() as cp:``."""

    def __init__(self, binaries: Binaries, workdir: Path, *, log: TextIO = sys.stderr) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self._log = log
        self.pki = Pki(workdir / "pki")
        self.admin_cert = self.pki.issue("admin", "/O=system:masters/CN=kubernetes-admin")
        self.kubeconfig = self.pki.kubeconfig(
            workdir / "admin.kubeconfig", SERVER, "admin", self.admin_cert
        )
        kcm_cert = self.pki.issue("kcm", "/CN=system:kube-controller-manager")
        self._kcm_kubeconfig = self.pki.kubeconfig(
            workdir / "kcm.kubeconfig", SERVER, "kcm", kcm_cert
        )
        # The API server's identity towards kubelets (kubectl logs/exec on the real node).
        self._kubelet_client = self.pki.issue(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
        )
        node_cert = self.pki.issue("node", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        self._node_kubeconfig = self.pki.kubeconfig(
            workdir / "node.kubeconfig", SERVER, "node", node_cert
        )
        self.admin = KubeClient(
            SERVER,
            Credentials(
                ca_file=self.pki.ca_cert,
                cert_file=self.admin_cert.cert,
                key_file=self.admin_cert.key,
            ),
        )
        self.components = {c.name: c for c in self._components()}

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        *,
        log: TextIO = sys.stderr,
        keep_workdir: bool = False,
        hollow_node: bool = True,
        version: str | None = None,
    ) -> Iterator[ControlPlane]:
        """Build (or reuse) the binaries, enter a private network namespace, start, yield, stop.

        ``hollow_node=False`` starts no hollow node (the demo on the real node needs none; see
        :meth:`start_hollow_node`). ``version``: a pinned Kubernetes version ("1.30", see
        ``versions.py``); None, the newest.
        """
        binaries = ensure_kubernetes(log, version=version)
        netns.enter_private_network()
        base = cache_root() / "run"
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="cluster-", dir=base))
        plane = cls(binaries, workdir, log=log)
        try:
            plane.start(hollow_node=hollow_node)
            yield plane
        finally:
            plane.stop()
            if not keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def start(self, *, hollow_node: bool = True) -> None:
        started = time.monotonic()
        self._start("etcd", self._etcd_healthy)
        self._start("kube-apiserver", self._apiserver_ready)
        self._start("kube-controller-manager", self._root_ca_published)
        if hollow_node:
            self.start_hollow_node()
        self._say(f"control plane up in {time.monotonic() - started:.1f} s ({self.workdir})")

    def start_hollow_node(self) -> None:
        self._register_node()
        self._start("kubemark", self._node_ready)

    def stop(self) -> None:
        for name in reversed(list(self.components)):
            self.components[name].stop()

    def stop_apiserver(self) -> None:
        self.components["kube-apiserver"].stop()

    def start_apiserver(self) -> None:
        self._start("kube-apiserver", self._apiserver_ready)

    def restart(self, name: str) -> None:
        """Stop and start one component, waiting until it is ready again.

        After a long API server outage, the informers of kube-controller-manager and of the hollow
        kubelet sit in client-go's reflector backoff (up to a minute) before they list again;
        restarting them makes the cluster usable at once.
        """
        ready = {
            "etcd": self._etcd_healthy,
            "kube-apiserver": self._apiserver_ready,
            "kube-controller-manager": self._root_ca_published,
            "kubemark": self._node_ready,
        }[name]
        self.components[name].stop()
        self._start(name, ready)

    def rss(self) -> dict[str, int]:
        return {name: c.rss_bytes() for name, c in self.components.items()}

    # --- helpers for tests ------------------------------------------------------------------

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binaries.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def component_env(self) -> dict[str, str]:
        """PATH with kubectl first, KUBECONFIG pointing at the admin credential."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.binaries.directory}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # --- internals --------------------------------------------------------------------------

    def _components(self) -> Sequence[Component]:
        b, w, pki = self.binaries, self.workdir, self.pki
        etcd_peer = "http://127.0.0.1:2380"
        etcd_client = f"http://127.0.0.1:{ETCD_PORT}"
        node_tmp_setup = 'mount -t tmpfs -o mode=1777,size=512m tmpfs /tmp && exec "$0" "$@"'
        return (
            Component(
                "etcd",
                [
                    str(b.path("etcd")), "--name=default", f"--data-dir={w / 'etcd'}",
                    f"--listen-client-urls={etcd_client}", f"--advertise-client-urls={etcd_client}",
                    f"--listen-peer-urls={etcd_peer}", f"--initial-advertise-peer-urls={etcd_peer}",
                    f"--initial-cluster=default={etcd_peer}", "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                w / "etcd.log",
            ),
            Component(
                "kube-apiserver",
                [
                    str(b.path("kube-apiserver")), f"--etcd-servers={etcd_client}",
                    # Every address of the private network namespace: Pods of the real node
                    # reach it through the `kubernetes` Service's ClusterIP (tests/harness/node.py).
                    "--bind-address=0.0.0.0", f"--secure-port={APISERVER_PORT}",
                    "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--kubelet-client-certificate={self._kubelet_client.cert}",
                    f"--kubelet-client-key={self._kubelet_client.key}",
                    "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--tls-cert-file={pki.apiserver.cert}",
                    f"--tls-private-key-file={pki.apiserver.key}",
                    f"--service-account-issuer={SA_ISSUER}",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-cluster-ip-range=10.96.0.0/16", f"--cert-dir={w / 'apiserver'}",
                    "--profiling=false", f"--audit-policy-file={self._audit_policy()}",
                    f"--audit-log-path={w / 'audit.log'}", "--audit-log-maxsize=200",
                    "--audit-log-mode=batch", "--audit-log-batch-max-wait=1s",
                ],
                w / "kube-apiserver.log",
            ),
            Component(
                "kube-controller-manager",
                [
                    str(b.path("kube-controller-manager")),
                    f"--kubeconfig={self._kcm_kubeconfig}",
                    f"--authentication-kubeconfig={self._kcm_kubeconfig}",
                    f"--authorization-kubeconfig={self._kcm_kubeconfig}",
                    "--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    "--controllers=*,-bootstrapsigner,-tokencleaner",
                ],
                w / "kube-controller-manager.log",
            ),
            Component(
                "kubemark",
                [
                    "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    node_tmp_setup, str(b.path("kubemark")), "--morph=kubelet",
                    f"--name={NODE_NAME}", f"--kubeconfig={self._node_kubeconfig}",
                    "--use-host-image-service=false", "--max-pods=1100",
                ],
                w / "kubemark.log",
            ),
        )  # fmt: skip

    def _audit_policy(self) -> Path:
        """Log only pod (status, log) and event requests: enough to count an agent's API calls."""
        path = self.workdir / "audit-policy.yaml"
        path.write_text(
            """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["pods", "pods/status", "pods/log", "events"]
  - group: "events.k8s.io"
    resources: ["events"]
- level: None
"""
        )
        return path

    def _start(self, name: str, ready: Callable[[], bool]) -> None:
        component = self.components[name]
        component.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if not component.running:
                raise HarnessError(
                    f"{name} exited during start-up; its log ends:\n{component.tail()}"
                )
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{name} not ready after {START_TIMEOUT:g} s; its log ends:\n{component.tail()}"
                )
            time.sleep(0.1)

    def _register_node(self) -> None:
        """Create the Node before the hollow kubelet starts.

        The kubelet registers its Node only after its first runtime status check (~10-20 s), but
        its CSI plugin gives up initialising the CSINode much sooner and then reports the node
        NotReady for good. With the Node already there, both succeed at once.
        """
        self.admin.post(
            "/api/v1/nodes",
            {"metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}}},
        )

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=2) as resp:
                return b'"true"' in resp.read()
        except (OSError, urllib.error.URLError):
            return False

    def _apiserver_ready(self) -> bool:
        try:
            return self.admin.raw("/readyz") == "ok"
        except (OSError, urllib.error.URLError):
            return False

    def _root_ca_published(self) -> bool:
        try:
            self.admin.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
            self.admin.get("/api/v1/namespaces/default/serviceaccounts/default")
        except (ApiError, OSError):
            return False
        return True

    def _node_ready(self) -> bool:
        try:
            node = self.admin.get(f"/api/v1/nodes/{NODE_NAME}")
        except (ApiError, OSError):
            return False
        return condition_status(node, "Ready") == "True"

    def _say(self, message: str) -> None:
        print(f"[control plane] {message}", file=self._log, flush=True)

    def wait_for_namespace_ready(self, namespace: str, timeout: float = 30) -> None:
        """A new namespace can host Pods once its default ServiceAccount and root CA exist."""

        def ready() -> bool:
            try:
                self.admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
                self.admin.get(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")
            except ApiError:
                return False
            return True

        wait_for(f"namespace {namespace} to be usable", ready, timeout=timeout)


def main() -> None:
    """Start a control plane and keep it until Ctrl-C: ``python -m tests.harness.cluster``.

    ``--keep`` keeps its work directory; ``--kube-version=1.30`` runs another pinned version.
    """
    version = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--kube-version=")), None)
    with ControlPlane.started(keep_workdir="--keep" in sys.argv, version=version) as plane:
        print(f"KUBECONFIG={plane.kubeconfig}  (inside this process's network namespace)")
        rss = plane.rss()
        for name, value in rss.items():
            print(f"  {name:<24} {value / 2**20:7.1f} MiB")
        print(f"  {'total':<24} {sum(rss.values()) / 2**20:7.1f} MiB")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
