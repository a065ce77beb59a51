"""The harness cache stays visible to the nodes, which mount a private tmpfs on /tmp and more."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.binaries import BuildError, cache_root


def test_a_cache_under_tmp_is_refused_with_the_variable_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/ci-cache")
    with pytest.raises(BuildError, match=r"under /tmp.*set XDG_CACHE_HOME"):
        cache_root()


def test_a_cache_outside_the_masked_directories_is_used_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/ci")
    assert cache_root() == Path("/var/cache/ci/readiness-gate-sidecar")
