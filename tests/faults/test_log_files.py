"""Log-file faults: the agent process follows a file that a writer process manipulates.

Each test runs the real agent (``python -m sidecar``) for a real Pod, with one log check, and a
separate writer process (``tests/faults/writer.py``) that appends, rotates, truncates, deletes and
recreates the file. The truth is observed three ways: the gate condition on the Pod (API server),
the check in the agent's ``/status``, and the sequence of ``check_state_changed`` log lines, which
proves that no ready line was missed and none was matched twice (every extra or missing match
would add or remove a state change).

The documented semantics (README, ``sidecar/checks/_follow.py``): rotation is not an application
event. A rename, a truncation, a ``copytruncate``, a deleted-and-recreated file, a rotated file
compressed away: the state is kept (also while the file is missing) and the new content is read
from its start, so its first line counts.

"Kept" is observed, not timed: after the change, the agent must have finished a probe that began
after it (its probe counter moved by two), and the gate and the check's states are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.followed import (
    FAIL,
    FAIL_SEEN,
    MISSING,
    NOISE,
    NOT_SEEN,
    READY,
    STAY,
    Followed,
    MiB,
)
from tests.faults.support import (
    Record,
    finish,
    metric,
    open_paths,
    wait_check,
)
from tests.harness.kube import wait_for


def test_rename_rotation_keeps_the_state_and_drains_the_old_file_first(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial="Starting Servlet engine\n")
    case.gate("False", NOT_SEEN)
    directory = case.path.parent

    # The ready line goes into the file a moment before it is renamed away: the agent must read
    # the rotated file to its end before it switches to the new one.
    case.writer.write(READY)
    case.writer.do("rotate", to=str(directory / "app.log.1"))
    case.gate("True")
    started = time.monotonic()
    case.writer.do("rotate", to=str(directory / "app.log.2"), then=NOISE)
    case.writer.write(NOISE)
    case.stays("True")  # a rotation is not a restart: the state is kept

    case.writer.write(FAIL)
    case.gate("False", FAIL_SEEN)
    record("rotation_then_fail_to_gate_false", time.monotonic() - started - STAY, "s")
    case.writer.do("rotate", to=str(directory / "app.log.3"), then=NOISE)
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")
    assert case.states() == ["not_ready", "ready", "not_ready", "ready"]
    assert (directory / "app.log.1").read_text().endswith(READY)
    finish(case.agent, record)


@pytest.mark.parametrize("how", ["copytruncate", "truncate"])
def test_truncation_keeps_the_state_and_the_new_content_is_read_from_its_start(
    follow: Callable[..., Followed], record: Record, how: str
) -> None:
    """logrotate's ``copytruncate`` (the standard recipe for ``catalina.out``) and truncation in
    place are rotation: the gate stays True; the first lines written afterwards count."""
    case = follow(initial="Starting Servlet engine\n" + READY)
    case.gate("True")
    rotated = {"to": str(case.path.parent / "app.log.1")} if how == "copytruncate" else {}

    case.writer.do(how, **rotated)
    case.kept("True")
    case.writer.write(NOISE * 20)  # regrows past where the agent had read
    case.kept("True")
    started = time.monotonic()
    case.writer.write(FAIL)  # long before the old offset: read only if read from the start
    case.gate("False", FAIL_SEEN)
    record(f"fail_line_after_{how}_to_gate_false", time.monotonic() - started, "s")

    # Truncated and regrown past the old offset before the agent can look (new first bytes).
    case.writer.do(how, then="Restarting Servlet engine\n" + NOISE * 40 + READY, **rotated)
    case.gate("True")
    case.writer.do(how, then=NOISE * 40, **rotated)
    case.kept("True")
    assert case.states() == ["ready", "not_ready", "ready"]
    if how == "copytruncate":  # the last copy holds what was there before the last truncation
        assert (case.path.parent / "app.log.1").read_text().endswith(READY)
    finish(case.agent, record)


def test_a_deleted_or_replaced_file_keeps_the_state(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=READY)
    case.gate("True")

    case.writer.do("delete")
    case.kept("True")  # missing for a while after having been followed: still rotation
    case.writer.do("create", then=NOISE)
    case.kept("True")
    case.writer.write(FAIL)  # the new file is read from its start
    case.gate("False", FAIL_SEEN)

    # Deleted and recreated at once, while the agent still holds the old file open.
    case.writer.do("recreate", then=NOISE)
    case.kept("False")
    started = time.monotonic()
    case.writer.write(READY)
    case.gate("True")
    record("ready_line_in_a_recreated_file_to_gate_true", time.monotonic() - started, "s")
    assert case.states() == ["ready", "not_ready", "ready"]
    finish(case.agent, record)


def test_rename_and_compress_seen_only_by_stat_polling_keeps_the_state(
    follow: Callable[..., Followed], record: Record
) -> None:
    """logrotate with ``compress`` and without ``delaycompress``: renamed, a new file created and
    the rotated file compressed and deleted before the agent looks (no inotify: periodic probes
    only), so the file the agent followed is gone."""
    case = follow(initial=READY, GATE_EVENT_DRIVEN="false")
    case.gate("True")
    rotated = case.path.parent / "app.log.1"

    case.writer.do("rotate_compress", to=str(rotated), then=NOISE)
    assert not rotated.exists()
    assert rotated.with_name("app.log.1.gz").exists()
    case.kept("True")
    case.writer.write(FAIL)
    case.gate("False", FAIL_SEEN)
    case.writer.do("rotate_compress", to=str(rotated), then=NOISE + READY)
    case.gate("True")
    assert case.states() == ["ready", "not_ready", "ready"]
    finish(case.agent, record)


REUSE_ATTEMPTS = 5


def _inode_reuse_possible(directory: Path) -> bool:
    probe = directory / ".inode-probe"
    probe.write_text("x")
    first = probe.stat().st_ino
    probe.unlink()
    probe.write_text("y")
    second = probe.stat().st_ino
    probe.unlink()
    return first == second


def test_a_recreated_file_reusing_the_same_inode_is_read_from_its_start(
    follow: Callable[..., Followed], record: Record, tmp_path: Path
) -> None:
    """The agent identifies files by inode plus first bytes: a new file that gets the old file's
    inode number (possible only once the agent has let go of the old one) is new content, read
    from offset 0, never from the old offset."""
    (tmp_path / "logs").mkdir()
    if not _inode_reuse_possible(tmp_path / "logs"):
        pytest.skip("this filesystem does not reuse a freed inode number at once")
    big = "Starting Servlet engine\n" + NOISE * 1000 + READY
    case = follow(initial=big)
    case.gate("True")
    for _ in range(REUSE_ATTEMPTS):  # other processes on a shared machine take inodes too
        old = case.writer.do("stat")
        case.writer.do("delete")
        wait_for(  # the agent has let go of the old inode
            "the agent to close the deleted file",
            lambda: not open_paths(case.agent.pid, case.path.parent),
            interval=0.005,
            describe=case.agent.describe,
        )
        new = case.writer.do("create", then="Restarting\n")  # at once, while the inode is free
        if new["ino"] == old["ino"]:
            break
        case.writer.write(big)  # not reused: make the agent's offset large again, and retry
        case.kept("True")
    else:
        pytest.skip(f"no freed inode number was reused in {REUSE_ATTEMPTS} attempts")
    assert new["size"] < old["size"]
    case.kept("True")
    case.writer.write(FAIL)  # far before the old offset: read only if read from the start
    case.gate("False", FAIL_SEEN)
    assert case.states() == ["ready", "not_ready"]
    finish(case.agent, record)


def test_a_file_missing_at_start_is_followed_once_it_appears(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=None)
    case.gate("False", MISSING)
    case.writer.do("create", then=NOISE)
    case.gate("False", NOT_SEEN)
    started = time.monotonic()
    case.writer.write(READY)
    case.gate("True")
    record("ready_line_to_gate_true", time.monotonic() - started, "s")
    assert case.states() == ["not_ready", "ready"]
    finish(case.agent, record)


def test_a_directory_missing_at_start_is_followed_once_it_appears(
    follow: Callable[..., Followed], record: Record, tmp_path: Path
) -> None:
    case = follow(initial=None, directory=False, path=tmp_path / "not" / "yet" / "app.log")
    case.gate("False", MISSING)
    case.stays("False")
    started = time.monotonic()
    case.writer.do("create", mkdir=True, then=NOISE + READY)
    case.gate("True")
    record("directory_created_to_gate_true", time.monotonic() - started, "s")
    assert case.states() == ["not_ready", "ready"]
    finish(case.agent, record)


def test_a_partial_last_line_waits_for_its_newline(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=NOISE)
    case.gate("False", NOT_SEEN)
    case.writer.write(READY.rstrip("\n"))  # matches the pattern, but the line is not finished
    case.stays("False")
    case.writer.write("\n")
    case.gate("True")
    case.writer.write(FAIL.rstrip("\n"))
    case.stays("True")
    case.writer.write("\n")
    case.gate("False", FAIL_SEEN)
    assert case.states() == ["not_ready", "ready", "not_ready"]
    finish(case.agent, record)


def test_one_mib_lines_are_cut_at_64_kib_and_memory_stays_bounded(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=NOISE)
    case.gate("False", NOT_SEEN)
    before = case.rss()
    # The ready text at the start of a 1 MiB line: within the first 64 KiB that are kept.
    case.writer.do("long_line", size=MiB, text=READY.rstrip("\n"), where="start")
    case.gate("True")
    # The fail text at the end of 1 MiB lines: beyond the cut, so never seen.
    for _ in range(16):
        case.writer.do("long_line", size=MiB, text="SEVERE", where="end")
    case.stays("True")
    # The line after a long one is a line of its own.
    case.writer.write(FAIL)
    case.gate("False", FAIL_SEEN)
    after = case.rss()
    record("rss_before_mib", before / MiB, "MiB")
    record("rss_after_17_mib_of_long_lines_mib", after / MiB, "MiB")
    assert after - before < 32 * MiB, f"RSS grew by {(after - before) / MiB:.1f} MiB"
    assert case.states() == ["not_ready", "ready", "not_ready"]
    finish(case.agent, record)


def test_invalid_utf8_is_replaced_and_matched_around(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=NOISE)
    case.gate("False", NOT_SEEN)
    case.writer.write_bytes(b"\xff\xfe\xc3\x28 broken \xed\xa0\x80 bytes\n")
    case.stays("False")
    case.writer.write_bytes(b"\x80\xbf Server startup in 77 ms \xf0\x28\x8c\x28\n")
    case.gate("True")
    case.writer.write_bytes(b"\xc0\xaf SEVERE \xfe\n")
    case.gate("False", FAIL_SEEN)
    assert case.states() == ["not_ready", "ready", "not_ready"]
    finish(case.agent, record)


def test_binary_garbage_neither_crashes_nor_matches(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=NOISE)
    case.gate("False", NOT_SEEN)
    case.writer.do("garbage", size=4 * MiB, seed=1)  # NULs, CRs, newlines, everything
    case.writer.write("\n")
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")
    case.writer.do("garbage", size=4 * MiB, seed=2)
    case.writer.write("\n")
    case.stays("True")
    case.writer.write(FAIL)
    case.gate("False", FAIL_SEEN)
    assert case.states() == ["not_ready", "ready", "not_ready"]
    finish(case.agent, record)


def test_a_thousand_rotations_while_lines_are_written_miss_no_line_and_match_none_twice(
    follow: Callable[..., Followed], record: Record
) -> None:
    """1,000 rename rotations in blocks of 50; in each block ONE significant line, alternately
    the ready and the fail line, at a random place among noise lines. After each block the check
    must show that line's verdict, and the number of state changes must be exactly one more
    than before: a missed line leaves the state unchanged, a line matched again flips it back."""
    case = follow(initial=NOISE)
    case.gate("False", NOT_SEEN)
    rotated = str(case.path.parent / "app.log.1")
    blocks, per_block = 20, 50
    started = time.monotonic()
    rss: list[int] = []
    waits: list[float] = []
    for block in range(blocks):
        ready = block % 2 == 0
        result = case.writer.do(
            "rotate_block",
            rotations=per_block,
            at=(block * 17) % per_block,
            significant=READY.rstrip("\n") if ready else FAIL.rstrip("\n"),
            to=rotated,
            agent_pid=case.agent.pid,
            lines=2,
        )
        waits.append(float(result["max_wait"]))
        wait_check(case.agent, "APP", state="ready" if ready else "not_ready", timeout=10)
        changes = case.agent.events("check_state_changed")
        assert len(changes) == block + 2, [(e["state"], e["detail"]) for e in changes]
        rss.append(case.rss())
    elapsed = time.monotonic() - started
    case.stays("False")
    case.gate("False", FAIL_SEEN)
    expected = ["not_ready"] + ["ready", "not_ready"] * (blocks // 2)
    assert case.states() == expected
    record("rotations", blocks * per_block, "")
    record("rotation_loop_seconds", elapsed, "s")
    record("max_wait_for_agent_to_follow_a_rotation", max(waits), "s")
    probes = metric(case.agent, "readiness_gate_check_duration_seconds_count")
    fast = metric(case.agent, "readiness_gate_check_duration_seconds_bucket", le="0.1")
    record("probes_during_rotations", probes, "")
    record("probes_slower_than_0.1s", probes - fast, "")
    record("rss_first_block_mib", rss[0] / MiB, "MiB")
    record("rss_max_mib", max(rss) / MiB, "MiB")
    assert max(rss) - rss[0] < 16 * MiB, [r // MiB for r in rss]
    assert max(rss) < 200 * MiB
    assert len(open_paths(case.agent.pid, case.path.parent)) == 1  # only the current file
    finish(case.agent, record)
