"""LogCheck on real files: latest match wins, rotation, restarts, age, catch-up, wake-ups,
cancellation, no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from sidecar.checks import _follow, _inotify
from sidecar.checks._follow import FollowBatch, LogFollower
from sidecar.checks._match import Found, Scanner
from sidecar.checks.log import INLINE_LIMIT, PATIENCE, LogCheck, MatchKind
from sidecar.clock import SystemClock
from sidecar.metrics import Metrics
from sidecar.model import (
    CheckKind,
    CheckSpec,
    GateMode,
    LogParams,
    LogStart,
    TcpParams,
    Timing,
)
from sidecar.prober import Worker
from sidecar.results import CheckState, Results
from tests.unit.checks.files import (
    ManualClock,
    append,
    open_fds,
    rename,
    unlink,
    wait_for_wakeup,
    write,
)

READY = "Server startup in"


def spec_for(
    path: Path,
    pattern: str = READY,
    *,
    fail: str | None = None,
    start_pattern: str | None = None,
    max_age: float | None = None,
    start: LogStart = LogStart.START,
    period: float = 2.0,
    timeout: float = 1.0,
) -> CheckSpec:
    return CheckSpec(
        id="APP",
        kind=CheckKind.LOG,
        gate=None,
        timing=Timing(period=period, timeout=timeout),
        params=LogParams(
            path=path,
            pattern=re.compile(pattern),
            fail_pattern=None if fail is None else re.compile(fail),
            start_pattern=None if start_pattern is None else re.compile(start_pattern),
            max_age=max_age,
            start=start,
        ),
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "app.log"


async def verdict(check: LogCheck) -> tuple[bool, str]:
    result = await check.probe()
    return result.ok, result.detail


# --- details --------------------------------------------------------------------------------


async def test_missing_file_fails_with_does_not_exist_yet(log: Path) -> None:
    check = LogCheck(spec_for(log), SystemClock())
    try:
        assert await verdict(check) == (False, f"{log} does not exist yet")
    finally:
        await check.aclose()


async def test_missing_directory_fails_with_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "app.log"
    check = LogCheck(spec_for(path), SystemClock())
    try:
        assert await verdict(check) == (False, f"{path} does not exist yet")
        path.parent.mkdir()
        append(path, "Server startup in 1 ms\n")
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {path}')
    finally:
        await check.aclose()


async def test_no_match_fails_with_pattern_not_seen(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        assert await verdict(check) == (False, f'pattern "{READY}" not seen in {log}')
    finally:
        await check.aclose()


async def test_ready_line_succeeds_with_pattern_seen(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        await check.probe()
        append(log, "INFO Server startup in 1234 ms\n")
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
        assert check.match is not None
        assert check.match.line == "INFO Server startup in 1234 ms"
    finally:
        await check.aclose()


async def test_a_ready_line_without_its_newline_yet_does_not_count(log: Path) -> None:
    check = LogCheck(spec_for(log), SystemClock())
    try:
        append(log, "Server startup in")
        assert not (await check.probe()).ok
        append(log, " 5 ms\n")
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_fail_line_fails_with_fail_pattern_seen(log: Path) -> None:
    append(log, "Server startup in 3 ms\nSEVERE: out of memory\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert await verdict(check) == (False, f'fail pattern "SEVERE" seen in {log}')
        assert check.match is not None
        assert check.match.kind is MatchKind.FAIL
    finally:
        await check.aclose()


async def test_latest_match_wins_across_lines_and_probes(log: Path) -> None:
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        append(log, "SEVERE: first try failed\nServer startup in 9 ms\n")
        assert (await check.probe()).ok
        append(log, "SEVERE: lost the database\n")
        assert not (await check.probe()).ok
        append(log, "noise\n")
        assert not (await check.probe()).ok
        append(log, "Server startup in 10 ms\nnoise\n")
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_a_line_matching_both_patterns_is_a_failure(log: Path) -> None:
    append(log, "Server startup in 5 ms\nSEVERE Server startup in 5 ms aborted\nnoise\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert await verdict(check) == (False, f'fail pattern "SEVERE" seen in {log}')
    finally:
        await check.aclose()


async def test_detail_is_bounded_deterministic_and_without_the_label(log: Path) -> None:
    pattern = "x" * 500
    check = LogCheck(spec_for(log, pattern), SystemClock())
    try:
        append(log, "noise\n")
        first = await check.probe()
        append(log, "more noise\n")
        second = await check.probe()
        assert len(first.detail) <= 200
        assert first.detail == second.detail
        assert "log APP" not in first.detail
        assert first.at > 1e9  # wall-clock time, like the other checks
    finally:
        await check.aclose()


async def test_read_errors_fail_with_a_clear_detail(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log), SystemClock())

    def refuse(self: LogFollower) -> FollowBatch:
        raise PermissionError(13, "Permission denied", str(log))

    try:
        with monkeypatch.context() as patch:
            patch.setattr(LogFollower, "read", refuse)
            assert await verdict(check) == (False, f"permission denied reading {log}")
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
    finally:
        await check.aclose()


async def test_a_directory_at_the_path_fails_with_is_a_directory(tmp_path: Path) -> None:
    check = LogCheck(spec_for(tmp_path), SystemClock())
    try:
        assert await verdict(check) == (False, f"{tmp_path} is a directory")
    finally:
        await check.aclose()


def test_the_check_needs_log_params(log: Path) -> None:
    spec = CheckSpec(
        id="APP", kind=CheckKind.LOG, gate=None, timing=Timing(), params=TcpParams(port=1)
    )
    with pytest.raises(TypeError, match="expected LogParams"):
        LogCheck(spec, SystemClock())


# --- where to start, and rotation --------------------------------------------------------------


async def test_start_end_ignores_a_ready_line_from_a_previous_run(log: Path) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, start=LogStart.END), SystemClock())
    try:
        assert not (await check.probe()).ok
        append(log, "Server startup in 2 ms\n")
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_truncation_keeps_the_state_and_reads_the_new_content_from_its_start(
    log: Path,
) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert (await check.probe()).ok
        write(log, "rotated\n")
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
        write(log, "SEVERE: broken\n")  # shorter than before: read from its start
        assert await verdict(check) == (False, f'fail pattern "SEVERE" seen in {log}')
    finally:
        await check.aclose()


async def test_copytruncate_keeps_the_state(log: Path) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert (await check.probe()).ok
        shutil.copyfile(log, log.with_suffix(".log.1"))
        os.truncate(log, 0)
        append(log, "a much longer line written after the rotation, still the same instance\n")
        assert (await check.probe()).ok
        shutil.copyfile(log, log.with_suffix(".log.1"))
        os.truncate(log, 0)
        append(log, "SEVERE: a fail line in the new content, far before the old offset\n")
        assert not (await check.probe()).ok
    finally:
        await check.aclose()


async def test_delete_and_recreate_keeps_the_state_also_while_the_file_is_missing(
    log: Path,
) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert (await check.probe()).ok
        unlink(log)
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
        append(log, "reopened by the application\n")
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
        unlink(log)
        append(log, "SEVERE: read from the start of the new file\n")
        assert not (await check.probe()).ok
    finally:
        await check.aclose()


async def test_rename_and_compress_seen_only_by_polling_keeps_the_state(log: Path) -> None:
    """logrotate without delaycompress: renamed, a new file created, the rotated file compressed
    (deleted) before the check looks again: the old inode is gone."""
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        assert (await check.probe()).ok
        rename(log, log.with_suffix(".log.1"))
        append(log, "first line of the new file\n")
        unlink(log.with_suffix(".log.1"))
        assert await verdict(check) == (True, f'pattern "{READY}" seen in {log}')
    finally:
        await check.aclose()


async def test_a_re_pointed_link_is_followed_to_its_new_file_from_its_start(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a" / "catalina.out", tmp_path / "b" / "catalina.out"
    for target, text in ((first, "Server startup in 1 ms\n"), (second, "SEVERE: boom\n")):
        target.parent.mkdir()
        append(target, text)
    link = tmp_path / "app.log"
    link.symlink_to(first)
    check = LogCheck(spec_for(link, fail="SEVERE"), SystemClock())
    try:
        assert (await check.probe()).ok
        staging = tmp_path / "app.log.new"
        staging.symlink_to(second)
        staging.replace(link)
        assert await verdict(check) == (False, f'fail pattern "SEVERE" seen in {link}')
    finally:
        await check.aclose()


async def test_a_missing_file_without_any_match_does_not_exist_yet(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        assert await verdict(check) == (False, f'pattern "{READY}" not seen in {log}')
        unlink(log)
        assert await verdict(check) == (False, f"{log} does not exist yet")
    finally:
        await check.aclose()


async def test_lines_of_a_deleted_file_are_read_to_its_end_before_the_new_file(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        assert not (await check.probe()).ok
        append(log, "Server startup in 1 ms\n")
        unlink(log)
        append(log, "SEVERE in the new file\n")
        # old file: ready (drained first); new file: then a fail line
        result = await check.probe()
        assert result.detail == f'fail pattern "SEVERE" seen in {log}'
    finally:
        await check.aclose()


async def test_rename_rotation_keeps_the_state_through_a_thousand_rotations(log: Path) -> None:
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    before = open_fds()
    try:
        assert (await check.probe()).ok
        for i in range(1000):
            rename(log, log.with_name(f"app.log.{i % 3}"))
            append(log, f"request {i} served\n")
            assert (await check.probe()).ok, i
        append(log, "SEVERE: finally broken\n")
        assert not (await check.probe()).ok
        assert open_fds() <= before + 1
    finally:
        await check.aclose()
    assert open_fds() <= before


async def test_a_big_backlog_is_drained_in_one_probe(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_follow, "BATCH_LIMIT", 64 * 1024)
    append(log, "".join(f"noise line {i}\n" for i in range(50_000)) + "Server startup in 7 ms\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        assert (await check.probe()).ok
    finally:
        await check.aclose()


# --- restarts: the start pattern and forget_before -------------------------------------------

STARTING = "Starting Servlet engine"
SINCE = f'pattern "{READY}" not seen in {{log}} since the application started'


async def test_a_start_line_forgets_the_match_until_the_pattern_appears_again(log: Path) -> None:
    append(log, f"{STARTING}\nServer startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE", start_pattern=STARTING), SystemClock())
    try:
        assert (await check.probe()).ok  # the ready line comes after the start line
        append(log, f"{STARTING} again\nInitializing\n")
        assert await verdict(check) == (False, SINCE.format(log=log))
        append(log, "Server startup in 2 ms\n")
        assert (await check.probe()).ok
        append(log, "SEVERE: broken\n")
        assert not (await check.probe()).ok
        append(log, f"{STARTING}\n")  # a start line forgets a fail match too
        assert await verdict(check) == (False, SINCE.format(log=log))
    finally:
        await check.aclose()


async def test_a_line_matching_the_start_and_the_ready_pattern_is_ready(log: Path) -> None:
    append(log, "SEVERE: old instance died\n")
    spec = spec_for(log, "started", fail="SEVERE", start_pattern="Server")
    check = LogCheck(spec, SystemClock())
    try:
        assert not (await check.probe()).ok
        append(log, "Server started\n")
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_a_start_line_in_the_same_read_as_the_ready_line_before_it_wins(log: Path) -> None:
    check = LogCheck(spec_for(log, start_pattern=STARTING), SystemClock())
    try:
        append(log, f"Server startup in 1 ms\n{STARTING}\nnoise\n")
        assert await verdict(check) == (False, SINCE.format(log=log))
    finally:
        await check.aclose()


async def test_forget_before_drops_a_match_read_before_the_new_instance_started(
    log: Path,
) -> None:
    clock = ManualClock(now=2_000.5)
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log), clock)
    try:
        await check.probe()  # read at 2000.5
        clock.now = 2_003.2
        check.forget_before(2_002.0)  # whole seconds, as startedAt
        assert await verdict(check) == (False, SINCE.format(log=log))
        append(log, "Server startup in 2 ms\n")  # the new instance's line, read at 2003.2
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_forget_before_keeps_what_the_new_instance_wrote_before_the_agent_was_told(
    log: Path,
) -> None:
    """startedAt has whole seconds: an instance that started at 2002.7 is reported as 2002. A
    ready line it wrote at 2002.9, read at once, counts whenever forget_before comes."""
    clock = ManualClock(now=2_002.9)
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, start=LogStart.END), clock)
    try:
        await check.probe()
        append(log, "Server startup in 2 ms\n")
        assert (await check.probe()).ok  # read at 2002.9
        clock.now = 2_003.5
        check.forget_before(2_002.0)
        assert (await check.probe()).ok
        check.forget_before(2_002.999)  # same whole second: nothing more is dropped
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_forget_before_also_drops_old_content_read_later(log: Path) -> None:
    clock = ManualClock(now=5_000.0)
    append(log, "Server startup in 1 ms\n")
    os.utime(log, (3_000.0, 3_000.0))  # written long before the instance started
    check = LogCheck(spec_for(log), clock)
    try:
        check.forget_before(4_000.0)  # told before the first read
        assert await verdict(check) == (False, SINCE.format(log=log))
    finally:
        await check.aclose()


async def test_forget_before_keeps_old_content_that_may_be_the_new_instances(log: Path) -> None:
    """An agent restart while the app keeps running: the file's mtime is after the instance's
    start, so its ready line may be the instance's own: it counts."""
    clock = ManualClock(now=5_000.0)
    append(log, "Server startup in 1 ms\n")
    os.utime(log, (4_500.0, 4_500.0))
    check = LogCheck(spec_for(log), clock)
    try:
        check.forget_before(4_000.0)
        assert (await check.probe()).ok
    finally:
        await check.aclose()


# --- max_age ------------------------------------------------------------------------------------


async def test_max_age_expires_a_ready_match_and_a_new_heartbeat_renews_it(log: Path) -> None:
    clock = ManualClock()
    check = LogCheck(spec_for(log, "alive", max_age=30), clock)
    try:
        append(log, "alive\n")
        assert await verdict(check) == (True, f'pattern "alive" seen in {log}')
        clock.now += 30
        assert (await check.probe()).ok  # exactly max_age old is still fresh
        clock.now += 0.5
        assert await verdict(check) == (
            False,
            f'pattern "alive" not seen in {log} for more than 30s',
        )
        append(log, "alive\n")
        assert (await check.probe()).ok
        assert check.match is not None
        assert check.match.seen_at == clock.now
    finally:
        await check.aclose()


async def test_max_age_does_not_apply_to_a_fail_match(log: Path) -> None:
    clock = ManualClock()
    check = LogCheck(spec_for(log, "alive", fail="dead", max_age=1.5), clock)
    try:
        append(log, "alive\ndead\n")
        clock.now += 100
        assert await verdict(check) == (False, f'fail pattern "dead" seen in {log}')
    finally:
        await check.aclose()


async def test_an_old_heartbeat_in_a_file_the_agent_finds_is_as_old_as_the_file(
    log: Path,
) -> None:
    clock = ManualClock(now=1_700_000_000.0)
    append(log, "HEARTBEAT\n")
    three_hours_ago = clock.now - 3 * 3600
    os.utime(log, (three_hours_ago, three_hours_ago))
    check = LogCheck(spec_for(log, "HEARTBEAT", max_age=10), clock)
    try:
        assert await verdict(check) == (
            False,
            f'pattern "HEARTBEAT" not seen in {log} for more than 10s',
        )
        assert check.match is not None
        assert check.match.seen_at == three_hours_ago
        append(log, "HEARTBEAT\n")  # written now: as old as when it was read
        assert (await check.probe()).ok
        assert check.match.seen_at == clock.now
    finally:
        await check.aclose()


async def test_a_recent_heartbeat_in_a_file_the_agent_finds_is_fresh(log: Path) -> None:
    clock = ManualClock(now=1_700_000_000.0)
    append(log, "HEARTBEAT\n")
    os.utime(log, (clock.now - 4, clock.now - 4))
    check = LogCheck(spec_for(log, "HEARTBEAT", max_age=10), clock)
    try:
        assert (await check.probe()).ok
        clock.now += 6.5
        assert not (await check.probe()).ok  # 10.5 s after the file was last written
    finally:
        await check.aclose()


# --- wake-ups -----------------------------------------------------------------------------------


async def test_a_ready_line_wakes_the_prober_within_a_second(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log, period=10.0), SystemClock())
    wakeups = check.wakeups()
    assert wakeups is not None
    try:
        assert not (await check.probe()).ok
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        await asyncio.sleep(0.3)  # the iterator sets up its watch
        begun = time.monotonic()
        append(log, "Server startup in 1 ms\n")
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - begun < 1.0
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_aclose_ends_the_wakeups_and_releases_descriptors(log: Path) -> None:
    before = open_fds()
    check = LogCheck(spec_for(log), SystemClock())
    wakeups = check.wakeups()
    assert wakeups is not None
    task = asyncio.create_task(wait_for_wakeup(wakeups))
    await asyncio.sleep(0.2)
    append(log, "Server startup in 1 ms\n")
    await asyncio.wait_for(task, 5)
    assert (await check.probe()).ok
    await check.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(wakeups)
    assert open_fds() == before


# --- cancellation and the single outstanding read ------------------------------------------------


class GatedReads:
    """Wraps LogFollower.read: the calls numbered in ``blocked`` (from 1) wait for ``gate``.

    Counts the calls and how many ran at the same time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, blocked: frozenset[int]) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()
        real = LogFollower.read

        def read(follower: LogFollower) -> FollowBatch:
            with self._lock:
                self.calls += 1
                self.running += 1
                self.most_running = max(self.most_running, self.running)
                wait = self.calls in blocked
            try:
                if wait:
                    assert self.gate.wait(30), "the test never opened the gate"
                return real(follower)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(LogFollower, "read", read)


async def test_a_cancelled_probe_loses_no_line_and_the_next_probe_reuses_its_read(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = GatedReads(monkeypatch, frozenset({1}))
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log, fail="SEVERE"), SystemClock())
    try:
        for _ in range(3):  # each probe times out while the first read hangs
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(check.probe(), 0.2)
        assert reads.calls == 1  # no new thread while the first read is outstanding
        next_probe = asyncio.create_task(check.probe())
        await asyncio.sleep(0.1)
        assert not next_probe.done()
        reads.gate.set()
        result = await asyncio.wait_for(next_probe, 10)
        assert result.ok  # the hung read's lines were applied, not lost
        assert reads.most_running == 1
        append(log, "SEVERE: broken\n")
        assert not (await check.probe()).ok
        append(log, "Server startup in 2 ms\n")
        assert (await check.probe()).ok
    finally:
        reads.gate.set()
        await check.aclose()


async def test_probes_cancelled_at_random_moments_apply_every_batch_once_in_order(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_follow, "BATCH_LIMIT", 4096)
    monkeypatch.setattr(_follow, "CHUNK_SIZE", 1024)
    check = LogCheck(spec_for(log, "ready", fail="fail"), SystemClock())
    try:
        for round_ in range(40):
            verdict_line = "ready" if round_ % 2 else "fail"
            append(log, "".join(f"noise {round_} {i}\n" for i in range(400)) + verdict_line + "\n")
            with contextlib.suppress(TimeoutError):  # cancelled mid-way, or not, at random
                await asyncio.wait_for(check.probe(), 0.0005 * (round_ % 7))
            result = await asyncio.wait_for(check.probe(), 10)
            assert result.ok is (verdict_line == "ready"), round_
    finally:
        await check.aclose()


async def test_concurrent_probes_never_read_in_two_threads(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = GatedReads(monkeypatch, frozenset())
    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log), SystemClock())
    try:
        results = await asyncio.gather(*(check.probe() for _ in range(10)))
        assert all(r.ok for r in results)
        assert reads.most_running == 1
    finally:
        await check.aclose()


async def test_aclose_during_a_hung_read_returns_and_the_file_is_released_later(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(log, "x\n")
    before = open_fds()
    reads = GatedReads(monkeypatch, frozenset({2}))
    check = LogCheck(spec_for(log), SystemClock())
    assert not (await check.probe()).ok  # the first read opens the file
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(check.probe(), 0.2)  # the second read hangs
        assert open_fds() == before + 1
        await asyncio.wait_for(check.aclose(), 1)  # does not wait for the hung thread
        assert open_fds() == before + 1  # the thread still uses the file
    finally:
        reads.gate.set()
    deadline = time.monotonic() + 10
    while open_fds() > before:
        assert time.monotonic() < deadline, "the follower's file was not closed"
        await asyncio.sleep(0.02)


@pytest.mark.usefixtures("no_inotify")
async def test_without_inotify_the_stat_poll_still_wakes_the_prober(log: Path) -> None:
    append(log, "starting\n")
    check = LogCheck(spec_for(log, period=0.2), SystemClock())  # polls every 0.2 s
    wakeups = check.wakeups()
    assert wakeups is not None
    try:
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        await asyncio.sleep(0.3)
        append(log, "Server startup in 1 ms\n")
        await asyncio.wait_for(task, 5)
        assert (await check.probe()).ok
    finally:
        await check.aclose()


async def test_a_change_inotify_never_reports_is_seen_by_the_next_periodic_probe(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A network volume: the watch is added, but no event ever arrives.
    monkeypatch.setattr(_inotify.PathWatch, "_parse", lambda self, data: False)
    append(log, "starting\n")
    spec = spec_for(log, period=0.3)
    check = LogCheck(spec, SystemClock())
    results = Results([spec], GateMode.ALL)
    worker = Worker(check, results, clock=SystemClock(), rng=random.Random(1), metrics=Metrics())
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.4)  # past the jittered second probe: one probe per period now
        assert worker.last_probe_at is not None
        begun = time.monotonic()
        append(log, "Server startup in 1 ms\n")
        while results.checks["APP"].state is not CheckState.READY:
            assert time.monotonic() - begun < 2.0, "the periodic probe did not see the line"
            await asyncio.sleep(0.01)
        assert time.monotonic() - begun <= 0.3 + 0.2  # one period, plus scheduling slack
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await check.aclose()


# --- big logs: catching up is pending, not failing -----------------------------------------------


async def test_a_probe_during_a_long_catch_up_is_inconclusive_and_names_the_progress(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_follow, "BATCH_LIMIT", 64 * 1024)
    reads = GatedReads(monkeypatch, frozenset({2}))  # the second batch takes "long"
    append(log, "noise line\n" * 200_000 + "Server startup in 7 ms\n")
    check = LogCheck(spec_for(log, timeout=1.0), SystemClock())
    try:
        result = await check.probe()  # one batch applied, then the drain waits
        assert result.inconclusive
        assert not result.ok
        assert result.detail == f"still reading {log}: 0 of 2 MiB"
        assert result.duration >= PATIENCE * 1.0 - 0.05
        reads.gate.set()
        result = await check.probe()
        assert (result.ok, result.inconclusive) == (True, False)
        assert reads.most_running == 1
    finally:
        reads.gate.set()
        await check.aclose()


async def test_a_read_that_makes_no_progress_is_left_to_the_probe_timeout(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = GatedReads(monkeypatch, frozenset({1}))  # a hung volume: the first read never ends
    append(log, "Server startup in 7 ms\n")
    check = LogCheck(spec_for(log, timeout=0.25), SystemClock())
    try:
        with pytest.raises(TimeoutError):  # what the prober turns into "timed out after 0.25s"
            await asyncio.wait_for(check.probe(), 0.6)
        reads.gate.set()
        assert (await check.probe()).ok
    finally:
        reads.gate.set()
        await check.aclose()


async def test_big_batches_are_matched_off_the_event_loop_and_small_ones_in_it(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = Scanner.scan

    def scan(self: Scanner, text: str) -> Found | None:
        threads.append(threading.current_thread().name)
        return real(self, text)

    monkeypatch.setattr(Scanner, "scan", scan)
    append(log, "noise line\n" * (INLINE_LIMIT // 10))  # more than INLINE_LIMIT characters
    check = LogCheck(spec_for(log), SystemClock())
    try:
        await check.probe()
        append(log, "Server startup in 1 ms\n")
        assert (await check.probe()).ok
    finally:
        await check.aclose()
    assert threads == ["check-APP", threading.main_thread().name]


async def test_reads_use_the_checks_own_thread_not_the_default_executor(log: Path) -> None:
    loop = asyncio.get_running_loop()
    used: list[object] = []
    original = loop.run_in_executor

    def spy(executor: object, *args: object) -> asyncio.Future[object]:
        used.append(executor)
        return original(executor, *args)  # type: ignore[arg-type]

    append(log, "Server startup in 1 ms\n")
    check = LogCheck(spec_for(log), SystemClock())
    wakeups = check.wakeups()
    assert wakeups is not None
    try:
        loop.run_in_executor = spy  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(wait_for_wakeup(wakeups))
        assert (await check.probe()).ok
        await asyncio.sleep(0.1)  # the wake-ups set up their watch
        append(log, "more\n")
        await asyncio.wait_for(task, 5)
        assert (await check.probe()).ok
    finally:
        del loop.run_in_executor
        await check.aclose()
    assert used == []
