"""What the real node runs: the kubelet and containerd built from Go modules, the rest from Debian.

- ``kubelet``: from the same pinned ``k8s.io/kubernetes`` module as the control plane
  (the newest ``tests/harness/k8s/<minor>/go.mod``), cached in the same directory as its binaries.
- ``containerd``, ``ctr`` and ``containerd-shim-runc-v2``: from
  ``github.com/containerd/containerd/v2``, pinned in ``tests/harness/containerdmod/go.mod`` and
  cached like the control plane
  (``~/.cache/readiness-gate-sidecar/containerd-<version>-<go>-<go.sum digest>/``).
- ``runc``, the CNI plugins (bridge, host-local, loopback), ``iptables`` (one DNAT rule stands in
  for kube-proxy), ``umoci``, ``mmdebstrap``, ``buildah`` and a C compiler (the pause image): Debian
  packages, installed with ``apt-get`` when missing, so that a brand-new Debian 12 machine works.

Everything that downloads (apt, the Go module proxy) runs in the machine's network namespace, also
when the caller already lives in the harness's private one.

Run ``python -m tests.harness.nodebuild`` to prepare everything (and the images) ahead of time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.harness import netns, versions
from tests.harness.binaries import BuildError, _ensure, _version_ldflags, module_version

CONTAINERD_GOMOD_DIR = Path(__file__).resolve().parent / "containerdmod"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
# (binary, Go package, typical cold build minutes on 2 cores)
KUBELET_TOOLS: tuple[tuple[str, str, float], ...] = (
    ("kubelet", "k8s.io/kubernetes/cmd/kubelet", 1.0),
)
CONTAINERD_TOOLS: tuple[tuple[str, str, float], ...] = (
    ("containerd", f"{CONTAINERD_MODULE}/cmd/containerd", 1.0),
    ("containerd-shim-runc-v2", f"{CONTAINERD_MODULE}/cmd/containerd-shim-runc-v2", 0.2),
    ("ctr", f"{CONTAINERD_MODULE}/cmd/ctr", 0.2),
)
# Debian package -> a file it installs (what the harness uses from it).
DEBIAN_PACKAGES: dict[str, str] = {
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "umoci": "/usr/bin/umoci",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "buildah": "/usr/bin/buildah",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/include/stdio.h",  # and libc.a, for the static pause binary
}
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
_APT_TRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeBinaries:
    kubernetes_version: str
    kubelet: Path
    containerd_version: str
    containerd_dir: Path  # containerd, ctr and the shim (containerd finds the shim on its PATH)

    @property
    def containerd(self) -> Path:
        return self.containerd_dir / "containerd"

    @property
    def ctr(self) -> Path:
        return self.containerd_dir / "ctr"


def ensure_node_binaries(out: TextIO = sys.stderr) -> NodeBinaries:
    """The Debian packages, the kubelet and containerd, installing or building what is missing."""
    ensure_debian_packages(out)
    kube = versions.newest()  # the node runs the newest pinned kubelet
    version = kube.release
    _download_modules(kube.gomod_dir, KUBELET_TOOLS)
    kubelet = _ensure(
        kube.gomod_dir, "k8s", version, KUBELET_TOOLS, out,
        ldflags=_version_ldflags(version), label="node",
    )  # fmt: skip
    containerd_version = module_version(CONTAINERD_GOMOD_DIR, CONTAINERD_MODULE)
    _download_modules(CONTAINERD_GOMOD_DIR, CONTAINERD_TOOLS)
    containerd = _ensure(
        CONTAINERD_GOMOD_DIR, "containerd", containerd_version, CONTAINERD_TOOLS, out,
        ldflags=_containerd_ldflags(containerd_version), label="node",
    )  # fmt: skip
    return NodeBinaries(
        kubernetes_version=version,
        kubelet=kubelet.path("kubelet"),
        containerd_version=containerd_version,
        containerd_dir=containerd.directory,
    )


def _containerd_ldflags(version: str) -> str:
    """The version stamps of containerd's own Makefile (``containerd --version`` prints them)."""
    pkg = f"{CONTAINERD_MODULE}/version"
    return " ".join(
        ["-s", "-w", f"-X {pkg}.Version={version}", f"-X {pkg}.Package={CONTAINERD_MODULE}"]
    )


def _download_modules(gomod_dir: Path, tools: tuple[tuple[str, str, float], ...]) -> None:
    """Fetch the modules the packages need, in the machine's network namespace.

    The build itself then needs no network: it may run inside the harness's private namespace.
    """
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"}
    argv = netns.host_network_command(["go", "list", "-deps", *(p for _, p, _ in tools)])
    result = subprocess.run(
        argv, cwd=gomod_dir, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(
            f"go list (module download) failed in {gomod_dir}:\n{result.stderr[-4000:]}"
        )


# --- Debian packages -----------------------------------------------------------------------------


def missing_debian_packages() -> list[str]:
    return [name for name, path in DEBIAN_PACKAGES.items() if not Path(path).exists()]


def ensure_debian_packages(out: TextIO = sys.stderr) -> None:
    """``apt-get install --no-install-recommends`` whatever the node needs and is not installed."""
    missing = missing_debian_packages()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(
            f"the real node needs the Debian packages {' '.join(missing)}; install them "
            "(apt-get install --no-install-recommends ...) or run as root on Debian 12"
        )
    print(f"[node] installing Debian packages: {' '.join(missing)}", file=out, flush=True)
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    _apt(["apt-get", "update", "-q", *lock], env, check=False)  # a failing extra source is fine
    _apt(["apt-get", "install", "-y", "-q", "--no-install-recommends", *lock, *missing], env)
    still = missing_debian_packages()
    if still:
        raise BuildError(f"apt-get installed {' '.join(missing)} but {still} are still missing")
    print(f"[node] installed in {time.monotonic() - started:.0f} s", file=out, flush=True)


def _apt(argv: list[str], env: dict[str, str], *, check: bool = True) -> None:
    """apt-get with a few tries: another process may hold apt's locks for a moment."""
    for _ in range(_APT_TRIES):
        result = subprocess.run(
            netns.host_network_command(argv), env=env, capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        if "Could not get lock" not in result.stderr:
            break
        time.sleep(5)
    if check:
        raise BuildError(
            f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def main() -> None:
    """Install and build everything the real node needs: ``python -m tests.harness.nodebuild``."""
    from tests.harness.images import ensure_images  # noqa: PLC0415 - images builds on this module

    started = time.monotonic()
    node = ensure_node_binaries()
    print(
        f"[node] kubelet {node.kubernetes_version}, containerd {node.containerd_version} "
        f"in {node.containerd_dir}",
        file=sys.stderr,
    )
    ensure_images()
    print(f"[node] ready after {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
