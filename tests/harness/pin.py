"""Pin a Kubernetes release for the harness: ``python -m tests.harness.pin v1.31.14``.

Writes ``tests/harness/k8s/<minor>/go.mod`` (a new minor version, or a new patch release of a
pinned one): ``require k8s.io/kubernetes <release>``, one replace per staging module that
release's own go.mod points at ``./staging`` (published as ``v0.<minor>.<patch>``), and a tool line
per binary the harness builds from it; then ``go mod tidy`` fills in the rest and go.sum. Commit
both files. A release newer than every pinned one becomes the default and also builds etcd.

The module proxy this project reaches does not serve every staging module at every patch release
(e.g. k8s.io/endpointslice v0.31.14: 403 "This module version is not available"). Such a module
is replaced by its newest earlier patch that the proxy lists, with a comment in go.mod saying so;
everything else, k8s.io/kubernetes itself included, stays at the pinned release.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness.binaries import K8S_TOOLS, SHARED_TOOLS
from tests.harness.versions import K8S_DIR, KUBERNETES, VersionError, available, parse_minor

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)
_NOT_SERVED = re.compile(r"(k8s\.io/[\w.-]+)@(v0\.\d+\.\d+): reading \S+: 403 Forbidden")
GOMOD = """\
// Kubernetes {minor} for the test harness. The version is pinned here and nowhere else: the
// k8s.io/kubernetes requirement below (write it with python -m tests.harness.pin vX.Y.Z).
module readiness-gate-sidecar/tests/harness/k8s/{minor}

go 1.26.0

require {kubernetes} {release}

// k8s.io/kubernetes replaces its staging modules with local paths; use their published versions.
replace (
{replaces})

tool (
{tools})
"""


def pin(release: str, k8s_dir: Path = K8S_DIR) -> Path:
    if not re.fullmatch(r"v\d+\.\d+\.\d+", release):
        raise VersionError(f"pin needs an exact release such as v1.30.14, not {release!r}")
    major, minor = parse_minor(release)
    staging_version = f"v0.{minor}.{release.rsplit('.', 1)[1]}"
    staging = sorted(set(_STAGING_REPLACE.findall(_upstream_gomod(release))))
    newest = all((major, minor) >= v.minor_key for v in available(k8s_dir))
    packages = [package for _, package, _ in K8S_TOOLS + (SHARED_TOOLS if newest else ())]
    directory = k8s_dir / f"{major}.{minor}"
    directory.mkdir(parents=True, exist_ok=True)
    versions = dict.fromkeys(staging, staging_version)
    notes: dict[str, str] = {}
    while True:
        _write_gomod(directory, major, minor, release, versions, notes, sorted(packages))
        tidy = subprocess.run(
            ["go", "mod", "tidy"],
            cwd=directory,
            env=_go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        missing = {m: v for m, v in _NOT_SERVED.findall(tidy.stderr) if versions.get(m) == v}
        if tidy.returncode == 0 or not missing:
            break
        for module, version in missing.items():
            versions[module] = _earlier_patch(module, version)
            notes.setdefault(module, f"{version} is not on the module proxy")
    if tidy.returncode != 0:
        raise VersionError(f"go mod tidy failed in {directory}:\n{tidy.stderr[-4000:]}")
    return directory


def _write_gomod(
    directory: Path,
    major: int,
    minor: int,
    release: str,
    versions: dict[str, str],
    notes: dict[str, str],
    packages: list[str],
) -> None:
    replaces = "".join(
        f"\t{m} => {m} {v}" + (f" // {notes[m]}" if m in notes else "") + "\n"
        for m, v in versions.items()
    )
    (directory / "go.mod").write_text(
        GOMOD.format(
            minor=f"{major}.{minor}",
            kubernetes=KUBERNETES,
            release=release,
            replaces=replaces,
            tools="".join(f"\t{package}\n" for package in packages),
        )
    )
    (directory / "go.sum").unlink(missing_ok=True)


def _earlier_patch(module: str, version: str) -> str:
    """The newest ``v0.<minor>.<p>`` with p below ``version``'s patch that the proxy lists."""
    listed = subprocess.run(
        ["go", "list", "-m", "-versions", module],
        cwd=K8S_DIR,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1:]
    prefix, patch = version.rsplit(".", 1)
    earlier = [int(v.rsplit(".", 1)[1]) for v in listed if v.rsplit(".", 1)[0] == prefix]
    earlier = [p for p in earlier if p < int(patch)]
    if not earlier:
        raise VersionError(f"the module proxy serves no {module} {prefix}.x before {version}")
    return f"{prefix}.{max(earlier)}"


def _upstream_gomod(release: str) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{KUBERNETES}@{release}"],
        capture_output=True,
        text=True,
        env=_go_env(),
        check=False,
    )
    if out.returncode != 0:
        raise VersionError(f"cannot download {KUBERNETES}@{release}: {out.stdout}{out.stderr}")
    return Path(json.loads(out.stdout)["GoMod"]).read_text()


def _go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod -buildvcs=false"}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.harness.pin vX.Y.Z")
    print(pin(sys.argv[1]))
