"""LogFollower on real files: rotation, truncation, replacement, odd content."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.checks import _follow
from sidecar.checks._follow import FollowBatch, LogFollower, describe_read_error
from tests.unit.checks.files import append, mtime, open_fds

RESET = "<reset>"


def drain(follower: LogFollower) -> list[FollowBatch]:
    """Call read() until it says there is nothing more."""
    batches = [follower.read()]
    while batches[-1].more:
        batches.append(follower.read())
    return batches


def events(follower: LogFollower) -> list[str]:
    """Lines read so far, with a RESET marker where a batch said reset."""
    out: list[str] = []
    for batch in drain(follower):
        if batch.reset:
            out.append(RESET)
        out.extend(batch.lines)
    return out


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "app.log"


@pytest.fixture
def follower(log: Path) -> Iterator[LogFollower]:
    with LogFollower(log, from_end=False) as f:
        yield f


# --- basics -------------------------------------------------------------------------------------


def test_reads_complete_lines_from_the_start(log: Path, follower: LogFollower) -> None:
    append(log, "one\ntwo\n")
    assert events(follower) == ["one", "two"]
    append(log, "three\n")
    assert events(follower) == ["three"]
    assert events(follower) == []


def test_batch_text_is_the_block_of_lines_each_ending_with_newline(
    log: Path, follower: LogFollower
) -> None:
    append(log, "a\nb\n")
    batch = follower.read()
    assert batch == FollowBatch(
        text="a\nb\n", reset=False, missing=False, more=False, written_before=mtime(log)
    )
    assert batch.lines == ["a", "b"]
    assert FollowBatch().lines == []


# --- how old the lines can be -------------------------------------------------------------------


def test_lines_already_there_carry_the_files_mtime_and_new_lines_none(log: Path) -> None:
    append(log, "old 1\nold 2\n")
    os.utime(log, (1_000_000.0, 1_000_000.0))
    with LogFollower(log, from_end=False) as follower:
        assert [(b.lines, b.written_before) for b in drain(follower)] == [
            (["old 1", "old 2"], 1_000_000.0)
        ]
        append(log, "new\n")
        assert [(b.lines, b.written_before) for b in drain(follower)] == [(["new"], None)]


def test_old_and_new_content_never_share_a_batch(log: Path) -> None:
    append(log, "old 1\nold 2 unfinished")
    os.utime(log, (1_000_000.0, 1_000_000.0))
    with LogFollower(log, from_end=False) as follower:
        assert [(b.lines, b.written_before) for b in drain(follower)] == [(["old 1"], 1_000_000.0)]
        append(log, " and finished\nnew\n")  # the line was finished after the agent came
        assert [(b.lines, b.written_before) for b in drain(follower)] == [
            (["old 2 unfinished and finished", "new"], None)
        ]


def test_old_content_longer_than_a_batch_ends_its_own_batches(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_follow, "BATCH_LIMIT", 16)
    append(log, "".join(f"old {i}\n" for i in range(10)))
    os.utime(log, (1_000_000.0, 1_000_000.0))
    with LogFollower(log, from_end=False) as follower:
        first = follower.read()
        append(log, "new\n")
        batches = [first, *drain(follower)]
    old = [line for b in batches if b.written_before == 1_000_000.0 for line in b.lines]
    new = [line for b in batches if b.written_before is None for line in b.lines]
    assert old == [f"old {i}" for i in range(10)]
    assert new == ["new"]


def test_nothing_is_old_in_a_file_created_after_the_first_read(log: Path) -> None:
    with LogFollower(log, from_end=False) as follower:
        assert follower.read().missing
        append(log, "line\n")
        assert [b.written_before for b in drain(follower)] == [None]


def test_nothing_is_old_after_a_truncation_or_with_from_end(log: Path) -> None:
    append(log, "old\n" * 100)
    os.utime(log, (1_000_000.0, 1_000_000.0))
    with LogFollower(log, from_end=True) as follower:
        assert drain(follower) == [FollowBatch()]
        append(log, "new\n")
        assert [(b.lines, b.written_before) for b in drain(follower)] == [(["new"], None)]
    with LogFollower(log, from_end=False) as follower:
        follower.read()
        os.truncate(log, 0)
        append(log, "after\n")
        assert [(b.lines, b.written_before) for b in drain(follower)] == [(["after"], None)]


def test_unfinished_last_line_is_buffered_until_its_newline(
    log: Path, follower: LogFollower
) -> None:
    append(log, "first\nsecond ha")
    assert events(follower) == ["first"]
    append(log, "lf of a ")
    assert events(follower) == []
    append(log, "line\nthird")
    assert events(follower) == ["second half of a line"]


def test_crlf_endings_are_tolerated(log: Path, follower: LogFollower) -> None:
    append(log, "windows\r\nunix\nlone\rcr\n")
    assert events(follower) == ["windows", "unix", "lone\rcr"]


def test_empty_lines_are_lines(log: Path, follower: LogFollower) -> None:
    append(log, "\n\nx\n")
    assert events(follower) == ["", "", "x"]


def test_from_end_skips_content_that_existed_at_the_first_open(log: Path) -> None:
    append(log, "old line\n")
    with LogFollower(log, from_end=True) as follower:
        assert events(follower) == []
        append(log, "new line\n")
        assert events(follower) == ["new line"]


def test_from_end_skips_the_rest_of_an_unfinished_line_it_started_in(log: Path) -> None:
    append(log, "old line\nold unfini")
    with LogFollower(log, from_end=True) as follower:
        assert events(follower) == []
        append(log, "shed\nnew\n")
        assert events(follower) == ["new"]


def test_from_end_reads_a_file_created_after_start_from_offset_zero(log: Path) -> None:
    with LogFollower(log, from_end=True) as follower:
        assert drain(follower)[-1].missing
        append(log, "first line of a new file\n")
        assert events(follower) == ["first line of a new file"]


def test_from_end_reads_a_replacement_file_from_offset_zero(log: Path) -> None:
    append(log, "old\n")
    with LogFollower(log, from_end=True) as follower:
        assert events(follower) == []
        log.unlink()
        append(log, "new\n")
        assert events(follower) == [RESET, "new"]


# --- missing file or directory ------------------------------------------------------------------


def test_missing_file_is_reported_as_missing_without_error(log: Path) -> None:
    with LogFollower(log, from_end=False) as follower:
        batch = follower.read()
        assert batch == FollowBatch(missing=True)
        assert not follower.is_open
        append(log, "hello\n")
        batch = follower.read()
        assert (batch.lines, batch.missing, batch.reset) == (["hello"], False, False)


def test_missing_directory_is_reported_as_missing_without_error(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "app.log"
    with LogFollower(path, from_end=True) as follower:
        assert follower.read().missing
        path.parent.mkdir(parents=True)
        assert follower.read().missing
        append(path, "started\n")
        assert events(follower) == ["started"]


def test_a_path_under_a_regular_file_is_missing_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with LogFollower(tmp_path / "file" / "app.log", from_end=False) as follower:
        assert follower.read().missing


def test_a_directory_at_the_path_raises_is_a_directory(tmp_path: Path) -> None:
    with LogFollower(tmp_path, from_end=False) as follower, pytest.raises(IsADirectoryError):
        follower.read()
    assert describe_read_error(tmp_path, IsADirectoryError(21, "x")) == f"{tmp_path} is a directory"


def test_unreadable_file_raises_permission_error(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(log, "x\n")
    log.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail the way it would for others
        real_open = os.open

        def refuse(path: object, flags: int, *args: int) -> int:
            if path == log:
                raise PermissionError(13, "Permission denied", str(log))
            return real_open(path, flags, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", refuse)
    with LogFollower(log, from_end=False) as follower, pytest.raises(PermissionError) as info:
        follower.read()
    assert describe_read_error(log, info.value) == f"permission denied reading {log}"


def test_read_error_descriptions_are_short_and_stable(log: Path) -> None:
    assert describe_read_error(log, PermissionError(13, "Permission denied")) == (
        f"permission denied reading {log}"
    )
    assert describe_read_error(log, OSError(5, "Input/output error")) == (
        f"cannot read {log}: Input/output error"
    )


# --- rotation and replacement -------------------------------------------------------------------


def test_rename_rotation_drains_the_old_file_then_reads_the_new_one_without_reset(
    log: Path, follower: LogFollower
) -> None:
    append(log, "a1\na2\n")
    assert events(follower) == ["a1", "a2"]
    append(log, "a3\n")  # written before the rotation, not read yet
    log.rename(log.with_suffix(".log.1"))
    append(log, "b1\nb2\n")
    assert events(follower) == ["a3", "b1", "b2"]
    append(log, "b3\n")
    assert events(follower) == ["b3"]


def test_rename_rotation_emits_the_old_files_unfinished_last_line(
    log: Path, follower: LogFollower
) -> None:
    append(log, "a1\nlast words")
    assert events(follower) == ["a1"]
    log.rename(log.with_suffix(".log.1"))
    append(log, "b1\n")
    assert events(follower) == ["last words", "b1"]


def test_after_a_rename_the_old_file_is_followed_until_a_new_one_appears(
    log: Path, follower: LogFollower
) -> None:
    append(log, "a1\n")
    assert events(follower) == ["a1"]
    rotated = log.with_suffix(".log.1")
    log.rename(rotated)
    append(rotated, "a2 written by the app before it reopened\n")
    batches = drain(follower)
    assert [b.lines for b in batches] == [["a2 written by the app before it reopened"]]
    assert not batches[-1].missing
    append(log, "b1\n")
    assert events(follower) == ["b1"]


def test_delete_and_recreate_drains_the_old_file_then_resets(
    log: Path, follower: LogFollower
) -> None:
    append(log, "a1\n")
    assert events(follower) == ["a1"]
    append(log, "a2\n")
    log.unlink()
    append(log, "b1\n")
    batches = drain(follower)
    # the old file's lines and the new file's never share a batch: reset applies before lines
    assert [(b.reset, b.lines) for b in batches] == [(False, ["a2"]), (True, ["b1"])]


def test_replacing_the_file_by_a_rename_over_it_resets(log: Path, follower: LogFollower) -> None:
    append(log, "a1\n")
    assert events(follower) == ["a1"]
    fresh = log.with_suffix(".new")
    append(fresh, "b1\n")
    fresh.replace(log)
    assert events(follower) == [RESET, "b1"]


def test_deleted_file_is_missing_and_its_successor_resets(log: Path, follower: LogFollower) -> None:
    append(log, "a1\n")
    assert events(follower) == ["a1"]
    append(log, "a2\n")
    log.unlink()
    batches = drain(follower)
    assert batches[-1].missing
    assert [line for b in batches for line in b.lines] == ["a2"]
    assert not follower.is_open
    assert drain(follower) == [FollowBatch(missing=True)]
    append(log, "b1\n")
    assert events(follower) == [RESET, "b1"]


def test_a_thousand_rename_rotations_lose_no_line_and_repeat_none(
    log: Path, follower: LogFollower
) -> None:
    written: list[str] = []
    seen: list[str] = []
    fds = open_fds()
    for rotation in range(1000):
        # reads between two renames, at a different moment each time
        when = rotation % 5
        if when == 0:
            seen.extend(events(follower))  # renamed, the new file not created yet
        append(log, "")  # logrotate's "create"
        if when <= 1 or rotation == 0:  # a new file must be noticed before it is renamed in turn
            seen.extend(events(follower))
        for i in range(3):
            line = f"ready {rotation}-{i}" if i == 1 else f"noise {rotation}-{i}"
            append(log, line + "\n")
            written.append(line)
            if when == 2 + i:
                seen.extend(events(follower))
        log.rename(log.with_name(f"app.log.{rotation % 5}"))
    seen.extend(events(follower))
    assert RESET not in seen
    assert seen == written
    assert open_fds() <= fds + 1


# --- truncation ---------------------------------------------------------------------------------


def test_truncation_in_place_resets_and_reads_from_the_start(
    log: Path, follower: LogFollower
) -> None:
    append(log, "old 1\nold 2\n")
    assert events(follower) == ["old 1", "old 2"]
    log.write_text("new\n")  # O_TRUNC, same inode, shorter
    assert events(follower) == [RESET, "new"]
    append(log, "next\n")
    assert events(follower) == ["next"]


def test_copytruncate_resets_and_never_repeats_an_old_line(
    log: Path, follower: LogFollower
) -> None:
    append(log, "old 1\nold 2\n")
    assert events(follower) == ["old 1", "old 2"]
    append(log, "old 3\n")
    shutil.copyfile(log, log.with_suffix(".log.1"))
    os.truncate(log, 0)
    append(log, "new 1\n")
    # old 3 was copied away before we read it: lost to the truncation, never read as new
    assert events(follower) == [RESET, "new 1"]


def test_copytruncate_is_detected_when_the_file_regrew_past_the_old_offset(
    log: Path, follower: LogFollower
) -> None:
    append(log, "2024-01-01 old line 1\n2024-01-01 old line 2\n")
    assert events(follower) == ["2024-01-01 old line 1", "2024-01-01 old line 2"]
    shutil.copyfile(log, log.with_suffix(".log.1"))
    os.truncate(log, 0)
    new = [f"2024-01-02 new line {i}" for i in range(10)]
    append(log, "".join(line + "\n" for line in new))
    assert log.stat().st_size > 44  # size alone would not tell
    assert events(follower) == [RESET, *new]


def test_truncation_discards_the_buffered_unfinished_line(log: Path, follower: LogFollower) -> None:
    append(log, "old\nunfinished old")
    assert events(follower) == ["old"]
    os.truncate(log, 0)
    append(log, "new\n")
    assert events(follower) == [RESET, "new"]


def test_fingerprint_grows_with_a_file_that_started_small(log: Path, follower: LogFollower) -> None:
    append(log, "a\n")
    assert events(follower) == ["a"]
    append(log, "b" * 300 + "\n")
    assert events(follower) == ["b" * 300]
    # rewrite in place, same size, same first two bytes, different bytes further in the head
    log.write_bytes(b"a\n" + b"c" * 300 + b"\n")
    assert events(follower) == [RESET, "a", "c" * 300]


def test_same_inode_recreated_while_no_descriptor_was_held_resets(
    log: Path, follower: LogFollower
) -> None:
    append(log, "old 1\nold 2\n")
    assert events(follower) == ["old 1", "old 2"]
    inode = log.stat().st_ino
    follower.close()
    # the same inode with new content larger than our offset: only the first bytes tell
    with log.open("r+b") as f:
        f.write(b"new 1\nnew 2\nnew 3\n")
    assert log.stat().st_ino == inode
    assert events(follower) == [RESET, "new 1", "new 2", "new 3"]


def test_reopening_after_close_resumes_the_same_file_where_it_was(
    log: Path, follower: LogFollower
) -> None:
    append(log, "one\ntw")
    assert events(follower) == ["one"]
    follower.close()
    assert not follower.is_open
    append(log, "o\nthree\n")
    assert events(follower) == ["two", "three"]


def test_a_file_replaced_while_no_descriptor_was_held_resets(
    log: Path, follower: LogFollower
) -> None:
    append(log, "old\n")
    assert events(follower) == ["old"]
    follower.close()
    log.rename(log.with_suffix(".log.1"))
    append(log, "new\n")
    assert events(follower) == [RESET, "new"]


# --- odd content ------------------------------------------------------------------------------


def test_a_one_mib_line_is_cut_to_max_line_and_stays_one_line(
    log: Path, follower: LogFollower
) -> None:
    append(log, b"x" * (1024 * 1024) + b"\nafter\n")
    lines = events(follower)
    assert lines == ["x" * _follow.MAX_LINE, "after"]


def test_a_long_line_arriving_in_pieces_is_cut_once_and_memory_stays_bounded(
    log: Path,
) -> None:
    with LogFollower(log, from_end=False, max_line=10) as follower:
        append(log, "short\n0123456")
        assert events(follower) == ["short"]
        for _ in range(100):
            append(log, "789" * 1000)
            assert events(follower) == []
            assert len(follower._partial) <= 10
        append(log, "tail\nnext\n")
        assert events(follower) == ["0123456789", "next"]


def test_long_lines_inside_one_chunk_are_each_cut(log: Path) -> None:
    with LogFollower(log, from_end=False, max_line=4) as follower:
        append(log, "abcdefgh\nij\nklmnopqrstuv\nwxyz\n12345\n")
        assert events(follower) == ["abcd", "ij", "klmn", "wxyz", "1234"]


def test_invalid_utf8_is_replaced_not_raised(log: Path, follower: LogFollower) -> None:
    append(log, b"caf\xc3\xa9 ok\nbad \xff\xfe bytes\ntruncated \xe2\x82\n")
    assert events(follower) == ["café ok", "bad \ufffd\ufffd bytes", "truncated \ufffd"]


def test_binary_garbage_never_raises(log: Path, follower: LogFollower) -> None:
    garbage = bytes(range(256)) * 64 + os.urandom(4096)
    append(log, garbage + b"\nend\n")
    lines = events(follower)
    assert lines[-1] == "end"
    assert sum(len(line) for line in lines) > 0


def test_multibyte_characters_split_across_reads_decode_whole(
    log: Path, follower: LogFollower
) -> None:
    data = "Grüße 🚀\n".encode()
    append(log, data[:3])
    assert events(follower) == []
    append(log, data[3:10])
    assert events(follower) == []
    append(log, data[10:])
    assert events(follower) == ["Grüße 🚀"]


def test_big_backlogs_come_in_bounded_batches_flagged_more(
    log: Path, follower: LogFollower, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_follow, "BATCH_LIMIT", 64 * 1024)
    monkeypatch.setattr(_follow, "CHUNK_SIZE", 16 * 1024)
    lines = [f"line {i:06d}" for i in range(20_000)]
    append(log, "".join(line + "\n" for line in lines))
    batches = drain(follower)
    assert len(batches) > 3
    assert all(b.more for b in batches[:-1])
    assert not batches[-1].more
    assert [line for b in batches for line in b.lines] == lines


def test_the_follower_holds_at_most_one_descriptor_and_releases_it(log: Path) -> None:
    before = open_fds()
    follower = LogFollower(log, from_end=False)
    for i in range(50):
        append(log, f"line {i}\n")
        follower.read()
        if i % 2:
            log.rename(log.with_suffix(".log.1"))
        else:
            log.unlink()
        follower.read()
        assert open_fds() <= before + 1
    follower.close()
    follower.close()
    assert open_fds() == before


def test_max_line_must_be_positive(log: Path) -> None:
    with pytest.raises(ValueError, match="max_line"):
        LogFollower(log, from_end=False, max_line=0)
