"""The inotify binding and PathWakeups: events while a watch exists, stat polling while not."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.checks import _inotify
from sidecar.checks._inotify import PathWakeups, PathWatch, WatchPoint, stat_key, watch_points
from tests.unit.checks.files import open_fds, project_files, wait_for_wakeup

SLOW = 30.0  # a poll interval long enough that only inotify can explain a quick wake-up


async def next_wakeup(wakeups: AsyncIterator[None], within: float) -> float:
    """Seconds until the next wake-up; fails if none comes ``within`` seconds."""
    started = time.monotonic()
    await asyncio.wait_for(anext(wakeups), within)
    return time.monotonic() - started


async def no_wakeup(wakeups: AsyncIterator[None], during: float) -> bool:
    """True if no wake-up comes for ``during`` seconds (the iterator is finished afterwards)."""
    try:
        await asyncio.wait_for(anext(wakeups), during)
    except TimeoutError:
        return True
    return False


def count_polls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path PathWakeups stats from now on."""
    polls: list[Path] = []
    real = _inotify.stat_key

    def counting(path: Path) -> _inotify.StatKey:
        polls.append(path)
        return real(path)

    monkeypatch.setattr(_inotify, "stat_key", counting)
    return polls


async def started(wakeups: PathWakeups, *, watching: bool = True) -> asyncio.Task[None]:
    """Start waiting for a wake-up in a task; return once the iterator is set up."""
    task = asyncio.create_task(wait_for_wakeup(wakeups))
    deadline = time.monotonic() + 5
    while wakeups.watching != watching or not wakeups._started:
        assert time.monotonic() < deadline, "the iterator did not set up in time"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # let the first stat finish in its worker thread
    return task


# --- the binding --------------------------------------------------------------------------------


def test_binding_reports_events_for_files_in_a_watched_directory(tmp_path: Path) -> None:
    fd = _inotify.inotify_init()
    try:
        wd = _inotify.inotify_add_watch(fd, tmp_path, _inotify.WATCH_MASK)
        (tmp_path / "app.log").write_text("x\n")
        data = os.read(fd, 4096)
        event_wd, mask, _cookie, length = struct.unpack_from("iIII", data)
        assert event_wd == wd
        assert mask & _inotify.IN_CREATE
        assert data[16 : 16 + length].rstrip(b"\0") == b"app.log"
        _inotify.inotify_rm_watch(fd, wd)
        _, mask, _, _ = struct.unpack_from("iIII", os.read(fd, 4096))
        assert mask & _inotify.IN_IGNORED
        with pytest.raises(BlockingIOError):  # non-blocking descriptor, nothing left
            os.read(fd, 4096)
    finally:
        os.close(fd)


def test_binding_raises_oserror_for_a_missing_directory(tmp_path: Path) -> None:
    fd = _inotify.inotify_init()
    try:
        with pytest.raises(OSError, match="inotify_add_watch") as info:
            _inotify.inotify_add_watch(fd, tmp_path / "missing", _inotify.WATCH_MASK)
        assert info.value.errno == errno.ENOENT
        with pytest.raises(OSError, match="inotify_rm_watch") as info:
            _inotify.inotify_rm_watch(fd, 12345)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_descriptor_is_close_on_exec() -> None:
    fd = _inotify.inotify_init()
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_stat_key_tells_missing_from_present_and_changed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert stat_key(path) is None
    assert stat_key(tmp_path / "f" / "under a file") is None
    path.write_text("a")
    first = stat_key(path)
    assert first is not None
    path.write_text("ab")
    assert stat_key(path) != first


def event(wd: int, mask: int, name: bytes = b"") -> bytes:
    padded = name + b"\0" * (16 - len(name)) if name else b""
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


def adopted(watch: PathWatch, watches: dict[int, frozenset[bytes]]) -> PathWatch:
    """``watch`` as if ``watches`` had been added (without a descriptor)."""
    watch._watches = dict(watches)
    watch._stale = False
    return watch


def stale(watch: PathWatch) -> bool:
    """Whether the watches must be computed again on the next poll."""
    return watch._stale


def test_queue_overflow_and_events_on_the_directory_itself_wake(tmp_path: Path) -> None:
    woken: list[bool] = []
    watch = adopted(
        PathWatch(tmp_path / "app.log", lambda: woken.append(True)), {1: frozenset({b"app.log"})}
    )
    assert not watch._parse(event(1, _inotify.IN_MODIFY, b"other.log"))
    assert watch._parse(event(1, _inotify.IN_MODIFY, b"app.log"))
    assert not stale(watch)  # a write does not change what the path resolves to
    assert watch._parse(event(-1, _inotify.IN_Q_OVERFLOW))
    assert watch._parse(event(1, _inotify.IN_ATTRIB))
    assert watch._parse(event(1, _inotify.IN_IGNORED))
    assert stale(watch)  # the directory is gone: watched again on a later poll
    assert not watch._parse(event(1, _inotify.IN_MODIFY, b"app.log"))  # from the dropped watch
    assert watch._parse(event(2, _inotify.IN_MODIFY, b"app.log"))  # a watch not adopted yet
    watch.close()


def test_a_created_or_renamed_name_makes_the_watches_stale(tmp_path: Path) -> None:
    watch = adopted(
        PathWatch(tmp_path / "app.log", lambda: None), {1: frozenset({b"..data", b"app.log"})}
    )
    assert watch._parse(event(1, _inotify.IN_MOVED_TO, b"..data"))  # a ConfigMap's ..data swap
    assert stale(watch)
    watch = adopted(watch, {1: frozenset({b"app.log"})})
    assert watch._parse(event(1, _inotify.IN_CREATE, b"app.log"))
    assert stale(watch)
    watch.close()


# --- what to watch ------------------------------------------------------------------------------


def test_a_plain_path_is_watched_in_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    assert watch_points(path) == (WatchPoint(tmp_path, frozenset({b"app.log"})),)
    path.write_text("x")
    assert watch_points(path) == (WatchPoint(tmp_path, frozenset({b"app.log"})),)


def test_a_missing_directory_has_nothing_to_watch(tmp_path: Path) -> None:
    assert watch_points(tmp_path / "missing" / "app.log") is None


def test_a_link_into_another_directory_watches_both_directories(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "catalina.out").write_text("x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").symlink_to("../real/catalina.out")
    assert watch_points(tmp_path / "logs" / "app.log") == (
        WatchPoint(tmp_path / "logs", frozenset({b"app.log"})),
        WatchPoint(tmp_path / "real", frozenset({b"catalina.out"})),
    )


def test_a_configmap_style_data_link_watches_the_link_and_the_current_version(
    tmp_path: Path,
) -> None:
    version = tmp_path / "..2026_01_01_00_00_00.1"
    version.mkdir()
    (version / "app.log").write_text("x")
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "app.log").symlink_to("..data/app.log")
    assert watch_points(tmp_path / "app.log") == (
        WatchPoint(tmp_path, frozenset({b"app.log", b"..data"})),
        WatchPoint(version, frozenset({b"app.log"})),
    )


def test_a_link_loop_has_nothing_to_watch(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert watch_points(tmp_path / "a") is None


# --- PathWakeups --------------------------------------------------------------------------------


async def test_an_appended_line_wakes_within_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("starting\n")
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        begun = time.monotonic()
        with path.open("a") as f:
            f.write("Server startup in 42 ms\n")
        await asyncio.wait_for(task, 5)
        latency = time.monotonic() - begun
        assert latency < 1.0, f"woke after {latency:.3f}s"
    finally:
        await wakeups.aclose()


@pytest.mark.parametrize("change", ["create", "rename", "delete", "replace"])
async def test_creating_renaming_deleting_or_replacing_the_file_wakes(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "app.log"
    if change != "create":
        path.write_text("x\n")
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        if change == "create":
            path.write_text("new\n")
        elif change == "rename":
            path.rename(tmp_path / "app.log.1")
        elif change == "delete":
            path.unlink()
        else:
            (tmp_path / "tmp").write_text("y\n")
            (tmp_path / "tmp").replace(path)
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()


async def test_events_for_other_files_in_the_directory_do_not_wake(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("x\n")
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        for i in range(20):
            (tmp_path / f"other-{i}.log").write_text("noise\n")
        done, _ = await asyncio.wait([task], timeout=0.5)
        assert not done
        task.cancel()
        await asyncio.wait([task])
    finally:
        await wakeups.aclose()


async def test_a_burst_of_writes_is_one_pending_wakeup(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        with path.open("a") as f:
            for i in range(1000):
                f.write(f"line {i}\n")
                f.flush()
        await asyncio.wait_for(task, 5)
        assert await no_wakeup(wakeups, 0.5)
    finally:
        await wakeups.aclose()


@pytest.mark.usefixtures("no_inotify")
async def test_polling_alone_notices_changes_when_inotify_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("x\n")
    wakeups = PathWakeups(path, 0.1)
    try:
        task = await started(wakeups, watching=False)
        path.write_text("xy\n")
        await asyncio.wait_for(task, 5)
        assert not wakeups.watching
    finally:
        await wakeups.aclose()


async def test_polling_takes_over_when_the_watch_limit_is_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def limit(fd: int, path: Path, mask: int) -> int:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(_inotify, "inotify_add_watch", limit)
    path = tmp_path / "app.log"
    wakeups = PathWakeups(path, 0.1)
    try:
        task = await started(wakeups, watching=False)
        path.write_text("appeared\n")
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()


@pytest.mark.usefixtures("no_inotify")
async def test_polling_wakes_only_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = count_polls(monkeypatch)
    path = tmp_path / "app.log"
    path.write_text("x\n")
    wakeups = PathWakeups(path, 0.05)
    try:
        assert await no_wakeup(wakeups, 0.5)
    finally:
        await wakeups.aclose()
    assert len(polls) >= 5  # it did poll, and nothing changed


async def test_with_a_watch_the_path_is_never_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = count_polls(monkeypatch)
    path = tmp_path / "app.log"
    path.write_text("x\n")
    wakeups = PathWakeups(path, 0.02)
    try:
        task = await started(wakeups)
        await asyncio.sleep(0.5)  # 25 poll intervals
        assert polls == [path]  # only the stat at start
        path.write_text("xy\n")
        await asyncio.wait_for(task, 5)
        assert polls == [path, path]  # and one per wake-up, to remember what it saw
    finally:
        await wakeups.aclose()


async def test_aclose_from_another_task_ends_an_iteration_waiting_for_events(
    tmp_path: Path,
) -> None:
    wakeups = PathWakeups(tmp_path / "app.log", SLOW)
    task = await started(wakeups)
    await wakeups.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 5)


async def test_a_directory_created_later_is_watched_on_a_later_poll(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    path = directory / "app.log"
    wakeups = PathWakeups(path, 0.1)
    try:
        task = await started(wakeups, watching=False)
        directory.mkdir()
        deadline = time.monotonic() + 5
        while not wakeups.watching:
            assert time.monotonic() < deadline, "the watch was not added after the directory"
            await asyncio.sleep(0.02)
        assert not task.done()
        path.write_text("hello\n")
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()


async def test_a_deleted_and_recreated_directory_is_watched_again(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "app.log"
    wakeups = PathWakeups(path, 0.1)
    try:
        task = await started(wakeups)
        shutil.rmtree(directory)
        await asyncio.wait_for(task, 5)  # the directory itself went away
        directory.mkdir()
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        deadline = time.monotonic() + 5
        while not wakeups.watching:
            assert time.monotonic() < deadline, "the directory was not watched again"
            await asyncio.sleep(0.02)
        path.write_text("back\n")
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()


async def test_aclose_releases_the_descriptor_and_ends_the_iteration(tmp_path: Path) -> None:
    before = open_fds()
    wakeups = PathWakeups(tmp_path / "app.log", SLOW)
    task = await started(wakeups)
    assert open_fds() == before + 1
    task.cancel()
    await asyncio.wait([task])
    await wakeups.aclose()
    assert open_fds() == before
    with pytest.raises(StopAsyncIteration):
        await anext(wakeups)


async def test_cancelling_a_waiting_iterator_releases_the_descriptor(tmp_path: Path) -> None:
    before = open_fds()
    wakeups = PathWakeups(tmp_path / "app.log", SLOW)
    task = await started(wakeups)
    task.cancel()
    await asyncio.wait([task])
    assert open_fds() == before
    assert not wakeups.watching


async def test_many_iterators_leak_no_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    before = open_fds()
    for i in range(50):
        wakeups = PathWakeups(path, 0.05)
        task = await started(wakeups)
        path.write_text(f"{i}\n")
        await asyncio.wait_for(task, 5)
        await wakeups.aclose()
    assert open_fds() == before


async def test_a_steady_stream_of_writes_wakes_at_most_every_min_gap(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    wakeups = PathWakeups(path, SLOW)
    stop = asyncio.Event()

    async def writer() -> None:
        with path.open("a") as f:
            while not stop.is_set():
                f.write("busy\n")
                f.flush()
                await asyncio.sleep(0.001)

    task = await started(wakeups)
    writing = asyncio.create_task(writer())
    try:
        await asyncio.wait_for(task, 5)
        began, count = time.monotonic(), 0
        while time.monotonic() - began < 0.5:
            await asyncio.wait_for(wait_for_wakeup(wakeups), 5)
            count += 1
        elapsed = time.monotonic() - began
        assert count >= 2  # the stream keeps waking the prober...
        assert count <= elapsed / _inotify.MIN_GAP + 1  # ...but not once per write
    finally:
        stop.set()
        await writing
        await wakeups.aclose()


# --- symbolic links -----------------------------------------------------------------------------


async def test_a_write_to_the_target_of_a_link_into_another_directory_wakes(
    tmp_path: Path,
) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "catalina.out"
    target.write_text("x\n")
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "app.log"
    path.symlink_to(target)
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        assert wakeups.watched_directories == (tmp_path / "logs", tmp_path / "real")
        with target.open("a") as out:
            out.write("appended to the real file\n")
        await asyncio.wait_for(task, 5)  # only inotify can wake this fast (SLOW polling)
    finally:
        await wakeups.aclose()


async def test_a_re_pointed_link_is_followed_to_its_new_directory(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "app.log").write_text(f"{name}\n")
    path = tmp_path / "app.log"
    path.symlink_to(tmp_path / "one" / "app.log")
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        staging = tmp_path / "app.log.tmp"
        staging.symlink_to(tmp_path / "two" / "app.log")
        staging.replace(path)  # re-pointed atomically
        await asyncio.wait_for(task, 5)
        task = await started(wakeups)
        assert wakeups.watched_directories == (tmp_path, tmp_path / "two")
        assert not wakeups._event.is_set()  # no wake-up pending: the next one is the write's
        assert not task.done()
        with (tmp_path / "two" / "app.log").open("a") as out:
            out.write("written to the new target\n")
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()


async def test_a_configmap_style_swap_wakes_and_the_new_version_keeps_waking(
    tmp_path: Path,
) -> None:
    project_files(tmp_path, {"app.log": b"first\n"})
    path = tmp_path / "app.log"
    wakeups = PathWakeups(path, SLOW)
    try:
        task = await started(wakeups)
        first = (tmp_path / "..data").resolve()
        assert wakeups.watched_directories == (tmp_path, first)  # the volume, its version
        project_files(tmp_path, {"app.log": b"second\n"})
        await asyncio.wait_for(task, 5)
        task = await started(wakeups)
        second = (tmp_path / "..data").resolve()
        assert second != first
        assert wakeups.watched_directories == (tmp_path, second)
        assert not wakeups._event.is_set()  # no wake-up pending: the next one is the write's
        assert not task.done()
        with path.open("a") as out:  # through the links: the new version's file
            out.write("appended\n")
        await asyncio.wait_for(task, 5)
    finally:
        await wakeups.aclose()
