"""Fixtures for the tests of the checks."""

from __future__ import annotations

import errno

import pytest

from sidecar.checks import _inotify


@pytest.fixture
def no_inotify(monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify cannot be had: every new instance fails as past ``fs.inotify.max_user_instances``."""

    def unavailable() -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_inotify, "inotify_init", unavailable)
