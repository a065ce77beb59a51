"""The exec check running real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from sidecar.checks.base import Check
from sidecar.checks.exec_ import KILL_GRACE, ExecCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckSpec, ExecParams, Timing

# Generous: the machine may be busy with other work while these tests run.
SETTLE = 5.0

SH = shutil.which("sh") or "/bin/sh"


def make_check(*argv: str) -> ExecCheck:
    spec = CheckSpec(
        id="APP", kind=CheckKind.EXEC, gate=None, timing=Timing(), params=ExecParams(argv=argv)
    )
    return ExecCheck(spec, SystemClock())


def sh(script: str, *args: str) -> ExecCheck:
    return make_check(SH, "-c", script, "sh", *args)


def is_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (it may linger as a zombie until init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def wait_until_gone(pid: int) -> bool:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return is_gone(pid)


def pid_in(path: Path) -> int | None:
    """The pid a shell wrote into ``path``, or None while it is not (completely) there."""
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


async def read_pid(path: Path) -> int:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if (pid := pid_in(path)) is not None:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def kill_pid_in(path: Path) -> int | None:
    """Clean up after a failed test: kill the process whose pid is in ``path``, if any."""
    pid = pid_in(path)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid


async def test_exec_check_succeeds_when_command_exits_zero() -> None:
    before = time.time()
    result = await make_check("true").probe()
    assert result.ok
    assert result.detail == "exit status 0"
    assert result.at >= before
    assert result.duration >= 0.0


async def test_exec_check_fails_with_the_exit_status_of_the_command() -> None:
    result = await sh("exit 3").probe()
    assert not result.ok
    assert result.detail == "exit status 3"


async def test_exec_check_puts_the_first_non_empty_line_of_output_in_the_detail() -> None:
    result = await sh(
        r"printf '\n   \n  not accepting connections  \nsecond line\n'; exit 2"
    ).probe()
    assert not result.ok
    assert result.detail == "exit status 2: not accepting connections"


async def test_exec_check_includes_stderr_in_the_output() -> None:
    result = await sh("echo 'no response' >&2; exit 1").probe()
    assert result.detail == "exit status 1: no response"


async def test_exec_check_keeps_output_on_success_in_the_detail() -> None:
    result = await sh("echo '/run/postgresql:5432 - accepting connections'").probe()
    assert result.ok
    assert result.detail == "exit status 0: /run/postgresql:5432 - accepting connections"


async def test_exec_check_drains_large_output_and_keeps_the_detail_bounded() -> None:
    # Far more than a pipe holds: the command would block forever if the pipe were not drained.
    check = sh("yes 'a line of output that repeats' | head -n 100000; exit 4")
    async with asyncio.timeout(SETTLE * 4):
        result = await check.probe()
    assert not result.ok
    assert result.detail == "exit status 4: a line of output that repeats"


async def test_exec_check_bounds_a_very_long_first_line() -> None:
    result = await sh("head -c 100000 /dev/zero | tr '\\0' x; exit 1").probe()
    assert not result.ok
    assert result.detail.startswith("exit status 1: xxx")
    assert len(result.detail) <= 200


async def test_exec_check_escapes_control_characters_in_output() -> None:
    result = await sh(r"printf '\033[31mdown\033[0m\n'; exit 1").probe()
    assert result.detail == "exit status 1: \\x1b[31mdown\\x1b[0m"


async def test_exec_check_reports_a_command_killed_by_a_signal() -> None:
    result = await sh("kill -TERM $$").probe()
    assert not result.ok
    assert result.detail == "killed by SIGTERM"


async def test_exec_check_gives_the_command_an_empty_stdin() -> None:
    # With an inherited stdin, ``cat`` could wait for input forever.
    async with asyncio.timeout(SETTLE):
        result = await make_check("cat").probe()
    assert result.ok


async def test_exec_check_fails_when_command_is_not_found() -> None:
    result = await make_check("pg_isready-not-installed-here", "-q").probe()
    assert not result.ok
    assert result.detail == "command not found: pg_isready-not-installed-here"


async def test_exec_check_fails_when_command_path_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "check"
    result = await make_check(str(missing)).probe()
    assert not result.ok
    assert result.detail == f"command not found: {missing}"


async def test_exec_check_fails_when_command_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = await make_check(str(script)).probe()
    assert not result.ok
    assert result.detail == f"permission denied: {script}"


async def test_exec_check_fails_when_command_is_not_a_program(tmp_path: Path) -> None:
    script = tmp_path / "check"
    script.write_bytes(b"\x00\x01\x02 not an executable format")
    script.chmod(0o755)
    result = await make_check(str(script)).probe()
    assert not result.ok
    assert result.detail == f"cannot run {script}: Exec format error"


async def test_exec_check_runs_argv_without_a_shell() -> None:
    result = await make_check("echo", "$HOME", "; exit 1").probe()
    assert result.ok
    assert result.detail == "exit status 0: $HOME ; exit 1"


async def test_exec_check_kills_hung_command_and_its_grandchild_on_timeout(
    tmp_path: Path,
) -> None:
    leader_file, child_file = tmp_path / "leader", tmp_path / "child"
    script = 'echo $$ > "$1"; sleep 100 & echo $! > "$2"; wait'
    check = sh(script, str(leader_file), str(child_file))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await check.probe()
        elapsed = time.monotonic() - started
        leader, child = await read_pid(leader_file), await read_pid(child_file)
        assert await wait_until_gone(child), f"grandchild {child} survived the timeout"
        assert is_gone(leader)  # killed and already reaped when probe() re-raised
    finally:
        kill_pid_in(leader_file)
        kill_pid_in(child_file)
    assert 1.5 <= elapsed < 1.5 + SETTLE


async def test_exec_check_gives_up_promptly_when_an_escaped_process_holds_its_output(
    tmp_path: Path,
) -> None:
    setsid = shutil.which("setsid")
    if setsid is None:
        pytest.skip("setsid is needed to leave the process group")
    child_file = tmp_path / "child"
    # The grandchild leaves the process group (its own session) but keeps stdout open.
    check = sh(f'{setsid} sleep 100 & echo $! > "$1"; wait', str(child_file))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await check.probe()
        elapsed = time.monotonic() - started
    finally:
        child = kill_pid_in(child_file)
        if child is not None:
            await wait_until_gone(child)
            for _ in range(10):  # let the loop see the pipe close and drop the transport
                await asyncio.sleep(0.05)
    assert 1.5 <= elapsed < 1.5 + KILL_GRACE + SETTLE


async def test_exec_check_kills_what_the_command_left_running_after_it_exits(
    tmp_path: Path,
) -> None:
    child_file = tmp_path / "child"
    check = sh('sleep 100 >/dev/null 2>&1 & echo $! > "$1"; exit 0', str(child_file))
    try:
        async with asyncio.timeout(SETTLE):
            result = await check.probe()
        child = await read_pid(child_file)
        assert await wait_until_gone(child), f"stray process {child} is still running"
    finally:
        kill_pid_in(child_file)
    assert result.ok


async def test_exec_check_detail_is_the_same_for_the_same_evidence() -> None:
    check = sh("echo 'connection refused'; exit 2")
    results = [await check.probe() for _ in range(3)]
    assert len({(r.ok, r.detail) for r in results}) == 1
    assert results[2].same_evidence(results[0])
    await check.aclose()


def test_exec_check_has_no_wakeups() -> None:
    check: Check = make_check("true")
    assert check.wakeups() is None


def test_exec_check_rejects_an_empty_argv() -> None:
    with pytest.raises(ValueError, match="argv is empty"):
        make_check()
