"""The command line: ``config``, ``check``, configuration errors, ``--version``, a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from sidecar import __version__, cli
from sidecar.cli import EXIT_CONFIG, EXIT_NOT_READY, EXIT_OK, main
from sidecar.clock import Clock
from sidecar.model import CheckSpec
from tests.unit.fakes import FakeCheck, Inconclusive, Step

REPO = Path(__file__).resolve().parents[2]


def file_check(check_id: str, path: Path, **extra: str) -> dict[str, str]:
    env = {f"CHECK_{check_id}_KIND": "file", f"CHECK_{check_id}_PATH": str(path)}
    env.update({f"CHECK_{check_id}_{key}": value for key, value in extra.items()})
    return env


def touch(path: Path) -> Path:
    path.write_text("ready\n")
    return path


# --- config --------------------------------------------------------------------------------------


def test_config_prints_the_effective_configuration_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**file_check("READY", tmp_path / "ready"), "GATE_WRITE": "false", "GATE_MODE": "any"}

    assert main(["config"], env=env) == EXIT_OK

    out, err = capsys.readouterr()
    config = json.loads(out)
    assert (config["write"], config["mode"], config["gates"]) == (False, "any", [None])
    [check] = config["checks"]
    assert check["id"] == "READY"
    assert err == ""


def test_config_does_not_need_the_api_even_when_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config"], env=file_check("READY", tmp_path / "ready")) == EXIT_OK

    assert json.loads(capsys.readouterr().out)["write"] is True


# --- check ---------------------------------------------------------------------------------------


def test_check_exits_0_when_every_gate_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = touch(tmp_path / "ready")
    env = {**file_check("READY", ready), "GATE_CONDITION_TYPE": "example.com/ready"}

    assert main(["check"], env=env) == EXIT_OK

    assert capsys.readouterr().out.splitlines() == [
        f"PASS  file READY: {ready} exists",
        f"gate example.com/ready: True (ChecksPassed: file READY: {ready} exists)",
    ]


def test_check_exits_1_when_a_gate_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready, missing = touch(tmp_path / "ready"), tmp_path / "missing"
    env = {**file_check("A", ready), **file_check("B", missing)}

    assert main(["check"], env=env) == EXIT_NOT_READY

    assert capsys.readouterr().out.splitlines() == [
        f"PASS  file A: {ready} exists",
        f"FAIL  file B: {missing} does not exist",
        f"gate (the Pod's readiness gate): False (CheckFailed: file B: {missing} does not exist)",
    ]


def test_check_prints_one_line_per_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ready, missing = touch(tmp_path / "ready"), tmp_path / "missing"
    env = {**file_check("A", ready, GATE="x.io/a"), **file_check("B", missing, GATE="x.io/b")}

    assert main(["check"], env=env) == EXIT_NOT_READY

    gates = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gate ")]
    assert gates == [
        f"gate x.io/a: True (ChecksPassed: file A: {ready} exists)",
        f"gate x.io/b: False (CheckFailed: file B: {missing} does not exist)",
    ]


def test_check_in_any_mode_passes_with_one_passing_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        **file_check("A", touch(tmp_path / "ready")),
        **file_check("B", tmp_path / "missing"),
        "GATE_MODE": "any",
    }

    assert main(["check"], env=env) == EXIT_OK

    assert "FAIL  file B" in capsys.readouterr().out


def test_check_reports_a_probe_that_times_out_as_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "CHECK_SLOW_KIND": "exec",
        "CHECK_SLOW_COMMAND": "sleep 30",
        "CHECK_SLOW_TIMEOUT_SECONDS": "0.2",
    }
    started = time.monotonic()

    assert main(["check"], env=env) == EXIT_NOT_READY

    assert time.monotonic() - started < 10
    assert "FAIL  exec SLOW: timed out after 0.2s" in capsys.readouterr().out.splitlines()


def test_check_probes_a_check_that_is_still_reading_again_until_it_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[FakeCheck] = []

    def build(spec: CheckSpec, clock: Clock, **_: object) -> FakeCheck:
        reading = Inconclusive("still reading: 1 of 3 MiB")
        script: list[Step] = [reading, reading, (True, "seen")]
        checks.append(FakeCheck(spec, clock, script))
        return checks[-1]

    monkeypatch.setattr(cli, "build_check", build)

    assert main(["check"], env=file_check("APP", tmp_path / "ready")) == EXIT_OK

    assert len(checks[0].probed_at) == 3
    assert checks[0].closed
    assert "PASS  file APP: seen" in capsys.readouterr().out


# --- configuration errors and --version ----------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "config", "run"])
def test_an_invalid_configuration_exits_2_and_names_every_problem(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"CHECK_APP_KIND": "nope", "GATE_MODE": "some", "GATE_WRITE": "false"}

    assert main([command], env=env) == EXIT_CONFIG

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("readiness-gate-sidecar: invalid configuration:\n")
    assert "CHECK_APP_KIND" in err
    assert "GATE_MODE" in err
    assert "Traceback" not in err


def test_run_needs_the_pod_identity_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**file_check("READY", tmp_path / "ready"), "KUBECONFIG": str(tmp_path / "kubeconfig")}

    assert main(["run"], env=env) == EXIT_CONFIG

    err = capsys.readouterr().err
    assert "POD_NAME" in err
    assert "POD_NAMESPACE" in err


def test_no_command_means_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env={"CHECK_APP_KIND": "nope"}) == EXIT_CONFIG

    assert "CHECK_APP_KIND" in capsys.readouterr().err


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"], env={})

    assert exited.value.code == 0
    assert capsys.readouterr().out == f"readiness-gate-sidecar {__version__}\n"


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"], env={})

    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- a real process ------------------------------------------------------------------------------


async def test_python_m_sidecar_check_runs_as_a_process(tmp_path: Path) -> None:
    ready = touch(tmp_path / "ready")
    env = {**file_check("READY", ready), **file_check("GONE", tmp_path / "gone", STATE="absent")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "check",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == EXIT_OK, err.decode()
    gone = tmp_path / "gone"
    assert out.decode().splitlines() == [  # checks in the order of their ids
        f"PASS  file GONE: {gone} does not exist",
        f"PASS  file READY: {ready} exists",
        "gate (the Pod's readiness gate): True "
        f"(ChecksPassed: file GONE: {gone} does not exist; file READY: {ready} exists)",
    ]


async def test_sigterm_stops_a_running_agent_within_a_second(tmp_path: Path) -> None:
    env = {
        **file_check("READY", touch(tmp_path / "ready")),
        "GATE_WRITE": "false",
        "GATE_HTTP_ADDRESS": "127.0.0.1:0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "run",
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):
            while True:
                line = await process.stdout.readline()
                assert line, "the agent exited before it started"
                if json.loads(line)["event"] == "agent_started":
                    break
        signalled = time.time()

        process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=10)

        assert process.returncode == EXIT_OK
        last = json.loads(rest.decode().splitlines()[-1])
        assert last["event"] == "agent_stopped"
        # the agent's own shutdown, by its log's clock (interpreter teardown is not counted)
        assert datetime.fromisoformat(last["timestamp"]).timestamp() - signalled < 1.0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
