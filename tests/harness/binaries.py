"""Build the control-plane binaries from the official Go modules, once, and cache them.

Each Kubernetes version is pinned in exactly one place: the ``k8s.io/kubernetes`` requirement of
``tests/harness/k8s/<minor>/go.mod`` (see ``versions.py``; the newest is the default). Binaries land
in ``~/.cache/readiness-gate-sidecar/k8s-<version>-<go version>-<go.mod+go.sum digest>/``, so a
version bump, a Go upgrade or a dependency change builds afresh and everything else starts in
seconds. kube-apiserver, kube-controller-manager, kubemark and kubectl come from the version's own
module; etcd only from the newest one, linked into every version's directory.

Run ``python -m tests.harness.binaries [--kube-version 1.30]`` to build ahead of time with visible
progress.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.harness import versions

HELM_GOMOD_DIR = Path(__file__).resolve().parent / "helmmod"
# Go 1.27 built a kube-apiserver that served broken OpenAPI; refuse it rather than debug that again.
REQUIRED_GO_MINOR = "go1.26"

# (binary, Go package, typical cold build minutes on 2 cores)
K8S_TOOLS: tuple[tuple[str, str, float], ...] = (
    ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", 7.5),
    ("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", 1.5),
    ("kubemark", "k8s.io/kubernetes/cmd/kubemark", 1.5),
    ("kubectl", "k8s.io/kubernetes/cmd/kubectl", 1.0),
)
# Built from the newest version's module only: the 1.37 etcd serves every supported API server.
SHARED_TOOLS: tuple[tuple[str, str, float], ...] = (("etcd", "go.etcd.io/etcd/server/v3", 1.0),)
HELM_TOOLS: tuple[tuple[str, str, float], ...] = (("helm", "helm.sh/helm/v3/cmd/helm", 2.0),)


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Binaries:
    version: str
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


#: Where the hollow node and the real node mount a private tmpfs: a cache there is hidden from them.
MASKED_BY_NODES = (Path("/tmp"), Path("/run"), Path("/var/lib"), Path("/var/log"))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base).resolve() / "readiness-gate-sidecar"
    for masked in MASKED_BY_NODES:
        if root.is_relative_to(masked):
            raise BuildError(
                f"the harness cache {root} is under {masked}, which the hollow node and the real "
                f"node replace with a private tmpfs (their binaries and kubeconfigs would vanish): "
                f"set XDG_CACHE_HOME to a directory outside {', '.join(map(str, MASKED_BY_NODES))}"
            )
    return root


def module_version(gomod_dir: Path, module: str) -> str:
    text = (gomod_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BuildError(f"{gomod_dir / 'go.mod'} does not require {module}")
    return match.group(1)


def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain is not installed (need Go 1.26.x on PATH)")
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    version = out.stdout.strip()
    if not (version == REQUIRED_GO_MINOR or version.startswith(REQUIRED_GO_MINOR + ".")):
        raise BuildError(
            f"found {version}, need {REQUIRED_GO_MINOR}.x: a kube-apiserver built with Go 1.27 "
            "serves broken OpenAPI (kubectl apply fails). Install Go 1.26 or unset GOTOOLCHAIN."
        )
    return version


def _cache_key(gomod_dir: Path, prefix: str, version: str, go: str) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((gomod_dir / name).read_bytes())
    return f"{prefix}-{version}-{go}-{digest.hexdigest()[:12]}"


def ensure_kubernetes(out: TextIO = sys.stderr, *, version: str | None = None) -> Binaries:
    """The binaries of a pinned Kubernetes version (default: the newest), building what is missing.

    ``version`` is anything ``versions.resolve`` accepts: "1.30", "v1.30.14", None.
    """
    kube, newest = versions.resolve(version), versions.newest()
    own = K8S_TOOLS + SHARED_TOOLS if kube == newest else K8S_TOOLS
    binaries = _ensure_version(kube, own, out)
    if kube != newest:
        shared = _ensure_version(newest, SHARED_TOOLS, out)
        for name, _, _ in SHARED_TOOLS:
            _link(binaries.path(name), shared.path(name))
    return binaries


def _ensure_version(
    kube: versions.KubeVersion, tools: tuple[tuple[str, str, float], ...], out: TextIO
) -> Binaries:
    ldflags = _version_ldflags(kube.release)
    return _ensure(kube.gomod_dir, "k8s", kube.release, tools, out, ldflags=ldflags)


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (concurrent sessions may be using the old link)."""
    if link.is_symlink() and link.readlink() == target:
        return
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)


def ensure_helm(out: TextIO = sys.stderr) -> Binaries:
    """helm at the version pinned in ``tests/harness/helmmod/go.mod``, building it if missing."""
    version = module_version(HELM_GOMOD_DIR, "helm.sh/helm/v3")
    return _ensure(HELM_GOMOD_DIR, "helm", version, HELM_TOOLS, out, ldflags=_helm_ldflags(version))


def _helm_ldflags(version: str) -> str:
    """The ldflags of helm's own Makefile (helm v3.x).

    ``internal/version.version`` is what ``helm version`` prints. The Kubernetes version helm
    assumes without a cluster (``.Capabilities.KubeVersion`` in ``helm template``, the API
    deprecation checks of ``helm lint``) defaults to v1.20 in the source; the Makefile sets it
    from the client-go module helm is built with (v0.37.x -> 1.37), and so do we.
    """
    client_go = module_version(HELM_GOMOD_DIR, "k8s.io/client-go")
    major, minor = client_go.removeprefix("v").split(".")[:2]
    k8s_major, k8s_minor = str(int(major) + 1), minor
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor={k8s_major}", f"-X {pkg}.k8sVersionMinor={k8s_minor}"]
    return " ".join(flags)


def _version_ldflags(version: str) -> str:
    major, minor = version.removeprefix("v").split(".")[:2]
    pkgs = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    flags = ["-s", "-w"]
    for pkg in pkgs:
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _ensure(
    gomod_dir: Path,
    prefix: str,
    version: str,
    tools: tuple[tuple[str, str, float], ...],
    out: TextIO,
    *,
    ldflags: str,
    label: str = "control plane",
) -> Binaries:
    go = go_version()
    directory = cache_root() / _cache_key(gomod_dir, prefix, version, go)
    binaries = Binaries(version=version, directory=directory)
    if all(binaries.path(name).is_file() for name, _, _ in tools):
        return binaries
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory / ".lock"):
        missing = [tool for tool in tools if not binaries.path(tool[0]).is_file()]
        if missing:
            _build(
                gomod_dir,
                missing,
                directory,
                out=out,
                ldflags=ldflags,
                label=label,
                version=version,
            )
    return binaries


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    gomod_dir: Path,
    tools: list[tuple[str, str, float]],
    directory: Path,
    *,
    out: TextIO,
    ldflags: str,
    label: str = "control plane",
    version: str,
) -> None:
    """One ``go build`` for all missing binaries: shared packages compile once, in parallel."""
    names = ", ".join(name for name, _, _ in tools)
    minutes = sum(m for _, _, m in tools)
    print(
        f"[{label}] building {names} {version} from the Go module proxy; a cold build takes up "
        f"to ~{minutes:g} min on 2 cores (later runs reuse ~/.cache)",
        file=out,
        flush=True,
    )
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    packages = [package for _, package, _ in tools]
    command = ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", f"{staging}/", *packages]
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"}
    started = time.monotonic()
    done = threading.Event()
    ticker = threading.Thread(
        target=_progress, args=(label, names, started, done, out), daemon=True
    )
    ticker.start()
    try:
        result = subprocess.run(
            command, cwd=gomod_dir, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BuildError(f"go build failed:\n{result.stderr[-4000:]}")
        for name, package, _ in tools:
            built = staging / _output_name(package)
            built.replace(directory / name)
    finally:
        done.set()
        ticker.join()
        shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"[{label}] built {names} in {elapsed:.0f} s", file=out, flush=True)


def _output_name(package: str) -> str:
    """The file name ``go build -o dir/`` gives a main package (a trailing /vN is skipped)."""
    parts = package.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


def _progress(label: str, names: str, started: float, done: threading.Event, out: TextIO) -> None:
    while not done.wait(30):
        elapsed = time.monotonic() - started
        print(f"[{label}] still building {names}: {elapsed:.0f} s", file=out, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.binaries")
    parser.add_argument("--with-helm", action="store_true", help="also build helm")
    parser.add_argument(
        "--kube-version",
        action="append",
        help="a pinned Kubernetes version (1.30, v1.30.14, oldest, newest or all); repeatable; "
        "default: the newest",
    )
    args = parser.parse_args()
    started = time.monotonic()
    wanted = args.kube_version or [None]
    if "all" in wanted:
        wanted = [v.minor for v in versions.available()]
    for version in wanted:
        k8s = ensure_kubernetes(version=version)
        print(
            f"[control plane] Kubernetes {k8s.version} binaries in {k8s.directory}", file=sys.stderr
        )
    if args.with_helm:
        helm = ensure_helm()
        print(f"[control plane] helm {helm.version} in {helm.directory}", file=sys.stderr)
    print(f"[control plane] ready after {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
