"""The Kubernetes versions the harness can run: one Go module directory per minor version.

``tests/harness/k8s/<major.minor>/go.mod`` pins one release, in exactly one place: its
``k8s.io/kubernetes vX.Y.Z`` requirement (the staging replaces follow it at ``v0.Y.Z``). The
newest directory is the default everywhere; the oldest is the oldest supported version.

    python -m tests.harness.versions               list the pinned versions, newest first
    python -m tests.harness.versions --minors      only their minor versions (for make matrix)

``python -m tests.harness.pin v1.31.14`` writes a minor version's module directory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

K8S_DIR = Path(__file__).resolve().parent / "k8s"
KUBERNETES = "k8s.io/kubernetes"


class VersionError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class KubeVersion:
    """One pinned release and the module directory that pins it."""

    minor_key: tuple[int, int]
    release: str  # "v1.30.14"
    gomod_dir: Path

    @property
    def minor(self) -> str:
        return f"{self.minor_key[0]}.{self.minor_key[1]}"


def parse_minor(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
    if not match:
        raise VersionError(f"{text!r} is not a Kubernetes version (expected e.g. 1.30 or v1.30.14)")
    return int(match.group(1)), int(match.group(2))


def pinned_release(gomod_dir: Path) -> str:
    text = (gomod_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(KUBERNETES)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise VersionError(f"{gomod_dir / 'go.mod'} does not require {KUBERNETES} vX.Y.Z")
    return match.group(1)


def available(k8s_dir: Path = K8S_DIR) -> list[KubeVersion]:
    """Every pinned version, newest first."""
    found = []
    for gomod in k8s_dir.glob("*/go.mod"):
        release = pinned_release(gomod.parent)
        key = parse_minor(release)
        if gomod.parent.name != f"{key[0]}.{key[1]}":
            raise VersionError(f"{gomod} pins {release}: name its directory {key[0]}.{key[1]}")
        found.append(KubeVersion(minor_key=key, release=release, gomod_dir=gomod.parent))
    if not found:
        raise VersionError(f"no Kubernetes version is pinned under {k8s_dir}")
    return sorted(found, reverse=True)


def newest() -> KubeVersion:
    return available()[0]


def resolve(text: str | None, k8s_dir: Path = K8S_DIR) -> KubeVersion:
    """None, "" or "newest"; "oldest"; "1.30", "v1.30" or the exact pinned "v1.30.14"."""
    versions = available(k8s_dir)
    if not text or text == "newest":
        return versions[0]
    if text == "oldest":
        return versions[-1]
    key = parse_minor(text)
    for version in versions:
        if version.minor_key == key:
            patch_given = text.strip().count(".") == 2
            if patch_given and version.release != "v" + text.strip().removeprefix("v"):
                raise VersionError(
                    f"Kubernetes {text} is not pinned: {version.minor} is pinned at "
                    f"{version.release} ({version.gomod_dir / 'go.mod'})"
                )
            return version
    pinned = ", ".join(v.minor for v in versions)
    raise VersionError(f"Kubernetes {text} is not pinned (pinned: {pinned}); see tests.harness.pin")


def main(argv: list[str]) -> None:
    if argv == ["--minors"]:
        print(" ".join(version.minor for version in available()))
    elif not argv:
        for version in available():
            print(version.minor, version.release, version.gomod_dir)
    else:
        sys.exit(f"usage: python -m {__name__} [--minors]")


if __name__ == "__main__":
    main(sys.argv[1:])
