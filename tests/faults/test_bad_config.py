"""Malformed configurations through the real process: ``python -m sidecar`` (the container's
command) with a bad environment or config file.

README: validation reports every problem at once, naming the variable; the process exits with
status 2 and no traceback, before anything starts. Each case below must:

- exit 2, with ``readiness-gate-sidecar: invalid configuration:`` and the name of the variable (or
  of the file key) on stderr, and no traceback;
- print nothing on stdout (no log line: nothing started);
- make NO API call: ``KUBERNETES_SERVICE_HOST``/``PORT`` point at a socket this test listens on,
  and nobody connects to it. (The control case, a valid configuration, does connect: the
  detector works.)

The cases run concurrently (a few processes at a time) in a module fixture; each is reported as a
test of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import certifi
import pytest

from tests.faults.support import ROOT, accepted_connections

PREFIX = "readiness-gate-sidecar: invalid configuration:"
UNSET = None
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    env: dict[str, str | None]
    expect: tuple[str, ...]
    file: str | bytes | None = None  # written to {file}, named by GATE_CONFIG_FILE
    file_mode: int | None = None
    without_dac: bool = False  # run without CAP_DAC_OVERRIDE: root cannot read a mode-000 file


def case(id_: str, expect: str | tuple[str, ...], **env: str | None) -> Case:
    return Case(id_, env, (expect,) if isinstance(expect, str) else expect)


def file_case(
    id_: str, content: str | bytes, expect: str | tuple[str, ...], **options: object
) -> Case:
    expected = (expect,) if isinstance(expect, str) else expect
    return Case(id_, {"GATE_CONFIG_FILE": "{file}"}, expected, content, **options)  # type: ignore[arg-type]


LOG = {"CHECK_APP_KIND": "log", "CHECK_APP_PATH": "/logs/app.log", "CHECK_APP_PATTERN": "ready"}
TCP = {"CHECK_APP_KIND": "tcp", "CHECK_APP_ADDRESS": ":2525"}
HTTP = {"CHECK_APP_KIND": "http", "CHECK_APP_URL": "http://127.0.0.1:8080/health"}
EXEC = {"CHECK_APP_KIND": "exec", "CHECK_APP_COMMAND": "true"}

CASES = [
    # identity and API access
    case("missing POD_NAME", ("POD_NAME: required", "fieldPath: metadata.name"), POD_NAME=UNSET),
    case("missing POD_NAMESPACE", "POD_NAMESPACE: required", POD_NAMESPACE=UNSET),
    case("missing identity", ("POD_NAME: required", "POD_NAMESPACE: required"),
         POD_NAME=UNSET, POD_NAMESPACE=UNSET),
    case("missing API host", "KUBERNETES_SERVICE_HOST: not set", KUBERNETES_SERVICE_HOST=UNSET),
    case("missing API port", "KUBERNETES_SERVICE_PORT: required", KUBERNETES_SERVICE_PORT=UNSET),
    case("relative token dir", "GATE_TOKEN_DIR: expected an absolute path", GATE_TOKEN_DIR="sa"),
    # unknown names and typos
    case("unknown setting", "GATE_FOO: unknown setting", GATE_FOO="1"),
    case("typo in a setting", "GATE_PERIOD_SECOND: unknown setting; did you mean "
         "GATE_PERIOD_SECONDS?", GATE_PERIOD_SECOND="2"),
    case("typo in a parameter", ("CHECK_APP_PAHT", "did you mean CHECK_APP_PATH?"),
         CHECK_APP_PAHT="/x"),
    case("underscore in a check id", "CHECK_MY_APP_KIND: unknown check parameter APP_KIND",
         CHECK_APP_KIND=UNSET, CHECK_APP_PATH=UNSET, CHECK_MY_APP_KIND="log"),
    case("no checks", "no checks configured", CHECK_APP_KIND=UNSET, CHECK_APP_PATH=UNSET),
    # kinds and their parameters
    case("missing kind", "CHECK_APP_KIND: required", CHECK_APP_KIND=UNSET),
    case("unknown kind", 'CHECK_APP_KIND: expected log, tcp, file, http or exec, got "grpc"',
         CHECK_APP_KIND="grpc"),
    case("parameter of another kind", "CHECK_APP_URL: applies to http checks",
         CHECK_APP_URL="http://x/"),
    case("log without pattern", "CHECK_APP_PATTERN: required",
         **(LOG | {"CHECK_APP_PATTERN": UNSET})),
    case("log without path", "CHECK_APP_PATH: required", **(LOG | {"CHECK_APP_PATH": UNSET})),
    case("log relative path", "CHECK_APP_PATH: expected an absolute path",
         **(LOG | {"CHECK_APP_PATH": "logs/app.log"})),
    case("bad regex", ("CHECK_APP_PATTERN: expected a regular expression", "unterminated"),
         **(LOG | {"CHECK_APP_PATTERN": "Server (startup"})),
    case("bad fail regex", "CHECK_APP_FAIL_PATTERN: expected a regular expression",
         **(LOG | {"CHECK_APP_FAIL_PATTERN": "[SEVERE"})),
    case("log from", 'CHECK_APP_FROM: expected start or end, got "middle"',
         **(LOG | {"CHECK_APP_FROM": "middle"})),
    case("tcp without address", "CHECK_APP_ADDRESS: required", CHECK_APP_KIND="tcp",
         CHECK_APP_PATH=UNSET),
    case("tcp address without port", "CHECK_APP_ADDRESS: expected",
         **(TCP | {"CHECK_APP_ADDRESS": "localhost"}), CHECK_APP_PATH=UNSET),
    case("tcp port out of range", "CHECK_APP_ADDRESS: expected",
         **(TCP | {"CHECK_APP_ADDRESS": ":70000"}), CHECK_APP_PATH=UNSET),
    case("tcp bad escape", "CHECK_APP_SEND: expected text with backslash escapes",
         **(TCP | {"CHECK_APP_SEND": "PING\\xZZ"}), CHECK_APP_PATH=UNSET),
    case("tcp bad expect", "CHECK_APP_EXPECT: expected a regular expression",
         **(TCP | {"CHECK_APP_EXPECT": "^(220"}), CHECK_APP_PATH=UNSET),
    case("http without url", "CHECK_APP_URL: required", CHECK_APP_KIND="http",
         CHECK_APP_PATH=UNSET),
    case("http ftp url", "CHECK_APP_URL: expected", **(HTTP | {"CHECK_APP_URL": "ftp://x/"}),
         CHECK_APP_PATH=UNSET),
    case("http status range", "CHECK_APP_STATUS: expected",
         **(HTTP | {"CHECK_APP_STATUS": "600-100"}), CHECK_APP_PATH=UNSET),
    case("exec without command", "CHECK_APP_COMMAND: required", CHECK_APP_KIND="exec",
         CHECK_APP_PATH=UNSET),
    # invisible characters (a CRLF env file, a YAML copy-paste)
    case("lock path ending in a carriage return",
         ('CHECK_APP_PATH: expected an absolute path, got "/run/app.lock\\r"',
          "ends with a carriage return (\\r, U+000D)"),
         CHECK_APP_PATH="/run/app.lock\r", CHECK_APP_STATE="absent"),
    case("pattern ending in a carriage return",
         ("CHECK_APP_PATTERN: expected a regular expression", "ends with a carriage return"),
         **(LOG | {"CHECK_APP_PATTERN": "Server startup\r"})),
    case("log path ending in a space", "CHECK_APP_PATH: expected an absolute path, got "
         '"/logs/app.log ": it ends with a space (U+0020)',
         **(LOG | {"CHECK_APP_PATH": "/logs/app.log "})),
    case("zero-width space in a pattern",
         "CHECK_APP_PATTERN: expected a regular expression (Python re syntax), got "
         '"Server\\u200bstartup": it contains a zero-width space (\\u200b, U+200B) as character 7',
         **(LOG | {"CHECK_APP_PATTERN": "Server\u200bstartup"})),
    case("no-break space in a fail pattern",
         ("CHECK_APP_FAIL_PATTERN: expected", "a no-break space (\\xa0, U+00A0)"),
         **(LOG | {"CHECK_APP_FAIL_PATTERN": "Pausing\u00a0ProtocolHandler"})),
    case("exec unbalanced quote", ("CHECK_APP_COMMAND: expected a command line", "no closing"),
         **(EXEC | {"CHECK_APP_COMMAND": "sh -c 'oops"}), CHECK_APP_PATH=UNSET),
    case("file absent with contains", "CHECK_APP_CONTAINS: applies to a file that is present",
         CHECK_APP_STATE="absent", CHECK_APP_CONTAINS="ok"),
    case("gate missing for one check", "CHECK_APP_GATE: required because other checks name a gate",
         CHECK_B_KIND="exec", CHECK_B_COMMAND="true", CHECK_B_GATE="example.com/b"),
    # timing
    case("negative period", 'GATE_PERIOD_SECONDS: expected a number of seconds > 0, got "-1"',
         GATE_PERIOD_SECONDS="-1"),
    case("zero check period", "CHECK_APP_PERIOD_SECONDS: expected a number of seconds > 0",
         CHECK_APP_PERIOD_SECONDS="0"),
    case("not a number", 'GATE_PERIOD_SECONDS: expected', GATE_PERIOD_SECONDS="fast"),
    case("timeout equal to period",
         "GATE_TIMEOUT_SECONDS: expected a timeout shorter than the period",
         GATE_TIMEOUT_SECONDS="2", GATE_PERIOD_SECONDS="2"),
    case("check timeout above period", "CHECK_APP_TIMEOUT_SECONDS: expected a timeout shorter",
         CHECK_APP_TIMEOUT_SECONDS="5"),
    case("negative fast period", "GATE_FAST_PERIOD_SECONDS: expected a number of seconds >= 0",
         GATE_FAST_PERIOD_SECONDS="-0.1"),
    case("check fast period not below period",
         "CHECK_APP_FAST_PERIOD_SECONDS: expected a fast period shorter than the period",
         **(TCP | {"CHECK_APP_FAST_PERIOD_SECONDS": "2"}), CHECK_APP_PATH=UNSET),
    case("fast period of a file check",
         "CHECK_APP_FAST_PERIOD_SECONDS: applies to tcp or http checks",
         CHECK_APP_FAST_PERIOD_SECONDS="0.1"),
    case("zero threshold", "GATE_FAILURE_THRESHOLD: expected", GATE_FAILURE_THRESHOLD="0"),
    case("negative resync", "GATE_RESYNC_SECONDS: expected", GATE_RESYNC_SECONDS="-5"),
    # choices and values
    case("bad boolean", 'GATE_WRITE: expected', GATE_WRITE="maybe"),
    case("bad mode", 'GATE_MODE: expected all or any, got "some"', GATE_MODE="some"),
    case("bad log level", "GATE_LOG_LEVEL: expected", GATE_LOG_LEVEL="verbose"),
    case("bad shutdown policy", "GATE_ON_SHUTDOWN: expected", GATE_ON_SHUTDOWN="delete"),
    case("built-in condition type", "GATE_CONDITION_TYPE: expected a condition type of your own",
         GATE_CONDITION_TYPE="Ready"),
    case("malformed condition type", "GATE_CONDITION_TYPE: expected",
         GATE_CONDITION_TYPE="not a type!"),
    case("bad http address", "GATE_HTTP_ADDRESS: expected host:port", GATE_HTTP_ADDRESS=":99999"),
    case("every problem at once", ("GATE_MODE:", "GATE_FOO:", "CHECK_APP_KIND:", "POD_NAME:"),
         GATE_MODE="x", GATE_FOO="1", CHECK_APP_KIND="y", POD_NAME=UNSET),
    # the config file
    Case("missing config file", {"GATE_CONFIG_FILE": "/nonexistent/gate.yaml"},
         ("GATE_CONFIG_FILE (/nonexistent/gate.yaml): cannot read the config file",)),
    Case("config file is a directory", {"GATE_CONFIG_FILE": "/"},
         ("GATE_CONFIG_FILE (/): cannot read the config file: Is a directory",)),
    file_case("unreadable config file", "periodSeconds: 5\n",
              "GATE_CONFIG_FILE ({file}): cannot read the config file: Permission denied",
              file_mode=0, without_dac=True),
    file_case("invalid YAML", "checks: [unclosed\n", "GATE_CONFIG_FILE ({file}): invalid YAML"),
    file_case("config file not UTF-8", b"periodSeconds: \xff\xfe\n", "it is not UTF-8 text"),
    file_case("config file not a mapping", "- a\n- b\n", "expected a mapping of settings"),
    file_case("typo in the config file", "perodSeconds: 5\n",
              "perodSeconds in {file}: unknown setting; did you mean periodSeconds?"),
    file_case("bad value in the config file", "periodSeconds: -1\n",
              "GATE_PERIOD_SECONDS (periodSeconds in {file}): expected a number of seconds > 0"),
    file_case("duplicate key in the config file",
              "checks:\n  APP:\n    kind: log\n    path: /logs/a.log\n    pattern: ready\n"
              "    path: /logs/b.log\n",
              "checks.APP.path in {file}: set twice (lines 4 and 6): keep one"),
    file_case("identity in the config file", "podName: p\n",
              "podName in {file}: not allowed in the file: set POD_NAME in the environment"),
]  # fmt: skip


@dataclass
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str
    connections: int
    seconds: float
    config: str  # the path {file} stands for


def _base_env(tmp: Path, port: int) -> dict[str, str]:
    token_dir = tmp / "sa"
    token_dir.mkdir(exist_ok=True)
    (token_dir / "token").write_text("not-a-real-token")
    shutil.copyfile(certifi.where(), token_dir / "ca.crt")  # any CA: nobody answers anyway
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "POD_NAME": "legacy-0",
        "POD_NAMESPACE": "apps",
        "POD_UID": "0b0f6f4e-0000-4000-8000-000000000000",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(port),
        "GATE_TOKEN_DIR": str(token_dir),
        "GATE_HTTP_ADDRESS": "127.0.0.1:0",
        "CHECK_APP_KIND": "file",
        "CHECK_APP_PATH": str(tmp / "ready"),
    }


def _run(c: Case, tmp: Path, *, valid_control: bool = False) -> Outcome:
    tmp.mkdir(parents=True, exist_ok=True)
    with socket.socket() as api:
        api.bind(("127.0.0.1", 0))
        api.listen(16)
        api.setblocking(False)
        env = _base_env(tmp, api.getsockname()[1])
        config = tmp / "gate.yaml"
        if c.file is not None:
            data = c.file.encode() if isinstance(c.file, str) else c.file
            config.write_bytes(data)
            if c.file_mode is not None:
                config.chmod(c.file_mode)
        for name, value in c.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value.replace("{file}", str(config))
        argv = [*(NO_DAC if c.without_dac else []), sys.executable, "-m", "sidecar"]
        started = time.monotonic()
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if valid_control:  # a valid configuration: it must try to reach the API server
            deadline = time.monotonic() + 30
            connections = 0
            while not connections and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
                connections = accepted_connections(api)
            process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        seconds = time.monotonic() - started
        if not valid_control:
            connections = accepted_connections(api)
    return Outcome(process.returncode, stdout, stderr, connections, seconds, str(config))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    base = tmp_path_factory.mktemp("bad-config")
    runnable = [c for c in CASES if not c.without_dac or shutil.which("setpriv")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(_run, c, base / f"case-{i}") for i, c in enumerate(runnable)}
        yield {name: future.result() for name, future in futures.items()}


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_valid_control_configuration_does_reach_for_the_api(tmp_path: Path) -> None:
    outcome = _run(Case("valid", {}, ()), tmp_path, valid_control=True)
    assert outcome.connections >= 1, outcome
    assert outcome.returncode == 0, outcome.stderr
    assert "agent_started" in outcome.stdout


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_configuration_exits_2_naming_the_variable_without_calling_the_api(
    c: Case, outcomes: dict[str, Outcome]
) -> None:
    if c.id not in outcomes:
        pytest.skip("setpriv is not installed: root cannot be kept from reading a mode-000 file")
    outcome = outcomes[c.id]
    stderr = outcome.stderr
    assert outcome.returncode == 2, (outcome.returncode, stderr, outcome.stdout[-500:])
    assert stderr.startswith(PREFIX), stderr
    for expected in c.expect:
        assert expected.replace("{file}", outcome.config) in stderr, (expected, stderr)
    assert "Traceback" not in stderr
    assert outcome.stdout == "", outcome.stdout  # nothing started, nothing logged
    assert outcome.connections == 0, "the agent connected to the API server"
    assert outcome.seconds < 10
