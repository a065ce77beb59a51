"""FileCheck on real files: presence, absence, content, freshness, errors, wake-ups."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import pytest

from sidecar.checks import file as file_check
from sidecar.checks.file import CONTENT_LIMIT, FileCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckSpec, FileParams, FileState, LogParams, Timing
from tests.unit.checks.files import (
    ManualClock,
    chmod,
    mtime,
    open_fds,
    symlink,
    touch,
    wait_for_wakeup,
    write,
)


def spec_for(
    path: Path,
    *,
    state: FileState = FileState.PRESENT,
    contains: str | None = None,
    max_age: float | None = None,
    period: float = 2.0,
) -> CheckSpec:
    return CheckSpec(
        id="READY",
        kind=CheckKind.FILE,
        gate=None,
        timing=Timing(period=period),
        params=FileParams(
            path=path,
            state=state,
            contains=None if contains is None else re.compile(contains),
            max_age=max_age,
        ),
    )


async def verdict(
    spec: CheckSpec, clock: ManualClock | SystemClock | None = None
) -> tuple[bool, str]:
    check = FileCheck(spec, clock or SystemClock())
    try:
        result = await check.probe()
    finally:
        await check.aclose()
    assert len(result.detail) <= 200
    return result.ok, result.detail


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "ready"


async def test_present_succeeds_when_the_file_exists(marker: Path) -> None:
    touch(marker)
    assert await verdict(spec_for(marker)) == (True, f"{marker} exists")


async def test_present_accepts_anything_stat_can_see(tmp_path: Path) -> None:
    assert await verdict(spec_for(tmp_path)) == (True, f"{tmp_path} exists")


async def test_present_fails_when_the_file_does_not_exist(marker: Path) -> None:
    assert await verdict(spec_for(marker)) == (False, f"{marker} does not exist")


async def test_a_dangling_symlink_does_not_exist(marker: Path, tmp_path: Path) -> None:
    symlink(marker, tmp_path / "nowhere")
    assert await verdict(spec_for(marker)) == (False, f"{marker} does not exist")


async def test_a_path_under_a_regular_file_does_not_exist(marker: Path) -> None:
    touch(marker)
    assert await verdict(spec_for(marker / "x")) == (False, f"{marker / 'x'} does not exist")


async def test_absent_succeeds_when_the_file_does_not_exist(marker: Path) -> None:
    spec = spec_for(marker, state=FileState.ABSENT)
    assert await verdict(spec) == (True, f"{marker} does not exist")
    touch(marker)
    assert await verdict(spec) == (False, f"{marker} exists")


async def test_contains_matches_the_content(marker: Path) -> None:
    write(marker, "status: ok\n")
    assert await verdict(spec_for(marker, contains="ok")) == (True, f'{marker} matches "ok"')
    write(marker, "status: starting\n")
    assert await verdict(spec_for(marker, contains="ok")) == (
        False,
        f'{marker} does not match "ok"',
    )


async def test_contains_looks_at_the_first_mib_only(marker: Path) -> None:
    write(marker, b"x" * CONTENT_LIMIT + b"ok")
    assert not (await verdict(spec_for(marker, contains="ok")))[0]
    write(marker, b"x" * (CONTENT_LIMIT - 2) + b"ok")
    assert (await verdict(spec_for(marker, contains="ok")))[0]


async def test_contains_tolerates_invalid_utf8(marker: Path) -> None:
    write(marker, b"\xff\xfe garbage \x00 ready \xc3")
    assert (await verdict(spec_for(marker, contains="ready")))[0]


async def test_contains_on_a_directory_fails_with_is_a_directory(tmp_path: Path) -> None:
    assert await verdict(spec_for(tmp_path, contains="x")) == (
        False,
        f"{tmp_path} is a directory",
    )


async def test_contains_on_a_fifo_without_writer_does_not_hang(marker: Path) -> None:
    os.mkfifo(marker)
    ok, detail = await asyncio.wait_for(verdict(spec_for(marker, contains="ok")), 5)
    assert (ok, detail) == (False, f'{marker} does not match "ok"')


async def test_unreadable_content_fails_with_permission_denied(
    marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(marker, "ok\n")
    chmod(marker, 0)
    if os.geteuid() == 0:  # root reads any file: make the open fail the way it would for others
        real_open = os.open

        def refuse(path: object, flags: int, *args: int) -> int:
            if path == marker:
                raise PermissionError(13, "Permission denied", str(marker))
            return real_open(path, flags, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", refuse)
    assert await verdict(spec_for(marker, contains="ok")) == (
        False,
        f"permission denied reading {marker}",
    )


async def test_max_age_fails_once_the_file_is_older(marker: Path) -> None:
    touch(marker)
    mtime = 1_700_000_000.0
    os.utime(marker, (mtime, mtime))
    spec = spec_for(marker, max_age=10)
    assert await verdict(spec, ManualClock(mtime + 10)) == (True, f"{marker} exists")
    assert await verdict(spec, ManualClock(mtime + 10.5)) == (False, f"{marker} older than 10s")


async def test_a_future_mtime_counts_as_fresh(marker: Path) -> None:
    touch(marker)
    os.utime(marker, (2e9, 2e9))
    assert (await verdict(spec_for(marker, max_age=1), ManualClock(1.7e9)))[0]


async def test_max_age_and_contains_both_apply(marker: Path) -> None:
    write(marker, "ok")
    modified = mtime(marker)
    spec = spec_for(marker, contains="ok", max_age=2.5)
    assert await verdict(spec, ManualClock(modified + 1)) == (True, f'{marker} matches "ok"')
    assert await verdict(spec, ManualClock(modified + 3)) == (False, f"{marker} older than 2.5s")


def test_the_check_needs_file_params(marker: Path) -> None:
    spec = CheckSpec(
        id="X",
        kind=CheckKind.FILE,
        gate=None,
        timing=Timing(),
        params=LogParams(path=marker, pattern=re.compile("x")),
    )
    with pytest.raises(TypeError, match="expected FileParams"):
        FileCheck(spec, SystemClock())


async def test_creating_the_marker_wakes_the_prober_within_a_second(marker: Path) -> None:
    check = FileCheck(spec_for(marker, period=10.0), SystemClock())
    wakeups = check.wakeups()
    try:
        assert not (await check.probe()).ok
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        await asyncio.sleep(0.3)  # the iterator sets up its watch
        begun = time.monotonic()
        write(marker, "ok\n")
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - begun < 1.0
        assert (await check.probe()).ok
    finally:
        await check.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(wakeups)


async def test_a_hung_evaluation_is_awaited_by_the_next_probe_not_duplicated(
    marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    calls: list[float] = []
    real = file_check.evaluate

    def slow(params: FileParams, now: float, since: float | None) -> tuple[bool, str]:
        calls.append(now)
        if len(calls) == 1:
            assert gate.wait(30)
        return real(params, now, since)

    monkeypatch.setattr(file_check, "evaluate", slow)
    touch(marker)
    check = FileCheck(spec_for(marker), SystemClock())
    try:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(check.probe(), 0.2)
        assert len(calls) == 1
        gate.set()
        assert (await asyncio.wait_for(check.probe(), 10)).ok
        assert len(calls) == 2
    finally:
        gate.set()
        await check.aclose()


async def test_probes_and_wakeups_leak_no_descriptor(marker: Path) -> None:
    before = open_fds()
    for i in range(20):
        check = FileCheck(spec_for(marker, contains="ok"), SystemClock())
        wakeups = check.wakeups()
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        await asyncio.sleep(0.05)
        write(marker, f"ok {i}\n")
        await asyncio.wait_for(task, 5)
        assert (await check.probe()).ok
        await check.aclose()
    assert open_fds() == before
