"""How a test session picks its Kubernetes version (tests/harness/versions.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import versions
from tests.harness.versions import VersionError, available, resolve


def _pin(root: Path, minor: str, release: str, *, block: bool = True) -> None:
    (root / minor).mkdir(parents=True)
    requirement = f"k8s.io/kubernetes {release}"
    require = (
        f"require (\n\tgithub.com/x/y v1.0.0 // indirect\n\t{requirement} // indirect\n)"
        if block
        else f"require {requirement}"
    )
    (root / minor / "go.mod").write_text(
        f"module m\n\ngo 1.26.0\n\n{require}\n\ntool (\n\tk8s.io/kubernetes/cmd/kubectl\n)\n"
    )


@pytest.fixture
def k8s_dir(tmp_path: Path) -> Path:
    _pin(tmp_path, "1.30", "v1.30.14")
    _pin(tmp_path, "1.37", "v1.37.2", block=False)
    _pin(tmp_path, "1.9", "v1.9.11")  # numeric order, not lexical
    return tmp_path


def test_versions_are_listed_newest_first_in_numeric_order(k8s_dir: Path) -> None:
    assert [v.release for v in available(k8s_dir)] == ["v1.37.2", "v1.30.14", "v1.9.11"]


@pytest.mark.parametrize(
    ("text", "release"),
    [
        (None, "v1.37.2"),
        ("", "v1.37.2"),
        ("newest", "v1.37.2"),
        ("oldest", "v1.9.11"),
        ("1.30", "v1.30.14"),
        ("v1.30", "v1.30.14"),
        ("1.30.14", "v1.30.14"),
        ("v1.30.14", "v1.30.14"),
    ],
)
def test_resolve_accepts_a_minor_the_exact_release_or_a_keyword(
    k8s_dir: Path, text: str | None, release: str
) -> None:
    assert resolve(text, k8s_dir).release == release


def test_another_patch_release_is_refused_with_the_pinned_one(k8s_dir: Path) -> None:
    with pytest.raises(VersionError, match=r"1\.30 is pinned at v1\.30\.14"):
        resolve("1.30.2", k8s_dir)


@pytest.mark.parametrize("text", ["1.29", "latest", "1"])
def test_an_unpinned_or_malformed_version_is_refused(k8s_dir: Path, text: str) -> None:
    with pytest.raises(VersionError):
        resolve(text, k8s_dir)


def test_a_directory_must_be_named_after_the_minor_it_pins(k8s_dir: Path) -> None:
    _pin(k8s_dir, "1.31", "v1.32.13")
    with pytest.raises(VersionError, match=r"name its directory 1\.32"):
        available(k8s_dir)


def test_the_repository_pins_1_30_as_the_oldest_and_one_release_per_minor() -> None:
    pinned = available()
    assert pinned[-1].minor == "1.30"
    assert len({v.minor for v in pinned}) == len(pinned)
    assert versions.newest() == pinned[0]
