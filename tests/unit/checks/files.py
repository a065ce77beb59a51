"""Helpers shared by the tests of the file-based checks (log, file, follower, inotify).

The file operations are synchronous functions, so that async tests stay free of blocking calls in
their own body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path


class ManualClock:
    """Wall and monotonic time that only move when the test says so (``sleep`` moves them)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


async def wait_for_wakeup(wakeups: AsyncIterator[None]) -> None:
    await anext(wakeups)


def append(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    with path.open("ab") as f:
        f.write(data)


def write(path: Path, data: str | bytes) -> None:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def touch(path: Path) -> None:
    path.touch()


def unlink(path: Path) -> None:
    path.unlink()


def rename(path: Path, target: Path) -> None:
    path.rename(target)


def chmod(path: Path, mode: int) -> None:
    path.chmod(mode)


def symlink(path: Path, target: Path) -> None:
    path.symlink_to(target)


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def project_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``directory`` the way the kubelet updates a projected volume.

    Each version lives in a hidden timestamped directory; ``..data`` is a symlink to the current
    one, swapped atomically with a rename; the visible names are symlinks through ``..data``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
        (version / name).chmod(0o600)
    old = directory / "..data"
    previous = old.resolve() if old.is_symlink() else None
    staging = directory / "..data_tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(version.name)
    staging.replace(old)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"..data/{name}")
    if previous is not None and previous != version:
        for leftover in previous.iterdir():
            leftover.unlink()
        previous.rmdir()
