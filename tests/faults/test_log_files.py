"""Log-file faults: the agent process follows a file that a writer process manipulates.

Each test runs the real agent (``python -m sidecar``) for a real Pod, with one log check, and a
separate writer process (``tests/faults/writer.py``) that appends, rotates, truncates, deletes and
recreates the file. The truth is observed three ways: the gate condition on the Pod (API server),
the check in the agent's ``/status``, and the sequence of ``check_state_changed`` log lines, which
proves that no ready line was missed and none was matched twice (every extra or missing match
would add or remove a state change).

The documented semantics (README, ``sidecar/checks/_follow.py``): a rename-and-create rotation
keeps the state; a truncation, a ``copytruncate`` or a deleted-and-recreated file means the
application restarted and resets the state: the true state is then False until the ready line
appears again in the new content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.support import (
    Record,
    assert_gate_stays,
    check_states,
    finish,
    metric,
    open_paths,
    rss_bytes,
    wait_check,
    wait_gate,
)
from tests.faults.writer import LogWriter
from tests.harness.agent import AgentProcess
from tests.harness.kube import JSON, KubeClient
from tests.harness.workloads import GATE, PodRef

PATTERN = r"Server startup in \d+ ms"
READY = "Server startup in 1234 ms\n"
FAIL = "SEVERE: Servlet engine stopped\n"
NOISE = "INFO [main] Initializing ProtocolHandler\n"
NOT_SEEN = "not seen in"
MISSING = "does not exist yet"
FAIL_SEEN = 'fail pattern "SEVERE" seen'
STAY = 1.5  # how long a state must hold: longer than the agent's 1 s stat poll
MiB = 1024 * 1024
#: Every probe decides (thresholds 1). Log checks probe on every change of the file, so the period
#: only sets the stat poll (at most 1 s apart); the generous timeout keeps a probe that reads
#: megabytes on a busy machine from failing as "timed out", which would count as a state change.
TIMING = {
    "GATE_PERIOD_SECONDS": "3",
    "GATE_TIMEOUT_SECONDS": "2.5",
    "GATE_FAILURE_THRESHOLD": "1",
    "GATE_SUCCESS_THRESHOLD": "1",
}


@dataclass
class Followed:
    """One agent following one log file that one writer process manipulates."""

    admin: KubeClient
    pod: PodRef
    agent: AgentProcess
    writer: LogWriter
    path: Path

    def gate(self, status: str, message: str | None = None, timeout: float = 30) -> JSON:
        reason = "ChecksPassed" if status == "True" else "CheckFailed"
        return wait_gate(
            self.admin,
            self.pod,
            status,
            self.agent,
            reason=reason,
            message=message,
            timeout=timeout,
        )

    def stays(self, status: str, seconds: float = STAY) -> None:
        before = check_states(self.agent)
        assert_gate_stays(self.admin, self.pod, status, self.agent, seconds)
        assert check_states(self.agent) == before, "the check changed state meanwhile"

    def states(self) -> list[str]:
        return check_states(self.agent, "APP")

    def rss(self) -> int:
        return rss_bytes(self.agent.pid)


@pytest.fixture
def follow(
    admin: KubeClient,
    make_pod: Callable[..., PodRef],
    start_agent: Callable[..., AgentProcess],
    log_writer: Callable[[Path], LogWriter],
    tmp_path: Path,
) -> Callable[..., Followed]:
    """``follow(initial=...)``: a Pod, a writer on ``<tmp>/logs/app.log`` and the agent on it."""

    def start(
        *, initial: str | None = "", directory: bool = True, path: Path | None = None
    ) -> Followed:
        path = path or tmp_path / "logs" / "app.log"
        if directory:
            path.parent.mkdir(parents=True, exist_ok=True)
        writer = log_writer(path)
        if initial is not None:
            writer.do("create", then=initial)
        pod = make_pod()
        agent = start_agent(
            pod,
            GATE_CONDITION_TYPE=GATE,
            CHECK_APP_KIND="log",
            CHECK_APP_PATH=str(path),
            CHECK_APP_PATTERN=PATTERN,
            CHECK_APP_FAIL_PATTERN="SEVERE",
            **TIMING,
        )
        agent.wait_started()
        return Followed(admin=admin, pod=pod, agent=agent, writer=writer, path=path)

    return start


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
def test_truncation_resets_and_never_matches_an_old_line_again(
    follow: Callable[..., Followed], record: Record, how: str
) -> None:
    case = follow(initial="Starting Servlet engine\n" + READY)
    case.gate("True")
    rotated = {"to": str(case.path.parent / "app.log.1")} if how == "copytruncate" else {}

    started = time.monotonic()
    case.writer.do(how, **rotated)
    case.gate("False", NOT_SEEN)
    record(f"{how}_to_gate_false", time.monotonic() - started, "s")
    # The file grows again, past where the agent had read: the old ready line is gone for good.
    case.writer.write(NOISE * 20)
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")

    # Truncated and regrown past the old offset before the agent can look (new first bytes).
    case.writer.do(how, then="Restarting Servlet engine\n" + NOISE * 40, **rotated)
    case.gate("False", NOT_SEEN)
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")
    assert case.states() == ["ready", "not_ready", "ready", "not_ready", "ready"]
    if how == "copytruncate":
        assert (case.path.parent / "app.log.1").read_text().endswith(READY)
    finish(case.agent, record)


def test_delete_and_recreate_resets_the_state(
    follow: Callable[..., Followed], record: Record
) -> None:
    case = follow(initial=READY)
    case.gate("True")

    case.writer.do("delete")
    case.gate("False", MISSING)
    case.writer.do("create", then=NOISE)
    case.gate("False", NOT_SEEN)
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")

    # Deleted and recreated at once, while the agent still holds the old file open.
    started = time.monotonic()
    case.writer.do("recreate", then=NOISE)
    case.gate("False", NOT_SEEN)
    record("delete_recreate_to_gate_false", time.monotonic() - started, "s")
    case.stays("False")
    case.writer.write(READY)
    case.gate("True")
    assert case.states() == ["ready", "not_ready", "ready", "not_ready", "ready"]
    finish(case.agent, record)


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
    from offset 0 after a reset, never from the old offset."""
    (tmp_path / "logs").mkdir()
    if not _inode_reuse_possible(tmp_path / "logs"):
        pytest.skip("this filesystem does not reuse a freed inode number at once")
    case = follow(initial="Starting Servlet engine\n" + NOISE * 1000 + READY)
    case.gate("True")
    old = case.writer.do("stat")

    case.writer.do("delete")
    case.gate("False", MISSING)
    wait_check(case.agent, "APP", detail=MISSING)  # the agent has let go of the old inode
    new = case.writer.do("create", then="Restarting\n")
    assert new["ino"] == old["ino"], "the recreated file did not reuse the inode"
    assert new["size"] < old["size"]
    case.gate("False", NOT_SEEN)
    case.stays("False")
    case.writer.write(READY)  # far before the old offset: read only if read from the start
    case.gate("True")
    assert case.states() == ["ready", "not_ready", "ready"]
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
