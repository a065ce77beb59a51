"""Configuration from the environment and the config file: values, defaults and every problem."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from sidecar.config import (
    DEFAULT_TOKEN_DIR,
    ApiAccess,
    ConfigError,
    Identity,
    Settings,
    env_snippet,
    load_settings,
)
from sidecar.model import (
    CheckKind,
    CheckSpec,
    ExecParams,
    FileParams,
    FileState,
    GateMode,
    HttpParams,
    LogParams,
    LogStart,
    ShutdownPolicy,
    TcpParams,
    Timing,
)

LOG = {"CHECK_APP_KIND": "log", "CHECK_APP_PATH": "/logs/app.log", "CHECK_APP_PATTERN": "started"}
TCP = {"CHECK_APP_KIND": "tcp", "CHECK_APP_ADDRESS": "db:5432"}
FILE = {"CHECK_APP_KIND": "file", "CHECK_APP_PATH": "/run/ready"}
HTTP = {"CHECK_APP_KIND": "http", "CHECK_APP_URL": "http://127.0.0.1:8080/health"}
EXEC = {"CHECK_APP_KIND": "exec", "CHECK_APP_COMMAND": "/bin/true"}
IN_CLUSTER = {
    "POD_NAME": "shop-0",
    "POD_NAMESPACE": "shop",
    "POD_UID": "0c7a5c1e-7d47-4c3b-9d6e-1f3f0e0b7a11",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
}


def load(env: dict[str, str], *, require_api: bool = False) -> Settings:
    return load_settings(env, require_api=require_api)


def problems(env: dict[str, str], *, require_api: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env, require_api=require_api)
    return [str(problem) for problem in caught.value.problems]


def only_check(env: dict[str, str]) -> CheckSpec:
    [check] = load(env).checks
    return check


# --- defaults and valid values -----------------------------------------------------------------


def test_a_single_log_check_gets_the_documented_defaults() -> None:
    settings = load(LOG)

    assert settings == Settings(
        checks=(
            CheckSpec(
                id="APP",
                kind=CheckKind.LOG,
                gate=None,
                timing=Timing(),
                params=LogParams(path=Path("/logs/app.log"), pattern=re.compile("started")),
            ),
        ),
    )
    assert settings.defaults == Timing(
        initial_delay=0, period=2, timeout=1, success_threshold=1, failure_threshold=3
    )
    assert (settings.http_host, settings.http_port) == (None, 9779)
    assert settings.resync == 300
    assert settings.write is True
    assert settings.events is True
    assert settings.event_driven is True
    assert settings.mode is GateMode.ALL
    assert settings.on_shutdown is ShutdownPolicy.KEEP
    assert settings.log_level == "info"
    assert settings.api == ApiAccess(token_dir=DEFAULT_TOKEN_DIR)
    assert settings.identity is None
    assert settings.config_file is None


def test_global_settings_are_read_case_insensitively_where_they_are_words() -> None:
    settings = load(
        {
            **LOG,
            "GATE_MODE": "ANY",
            "GATE_WRITE": "False",
            "GATE_EVENTS": "FALSE",
            "GATE_EVENT_DRIVEN": "false",
            "GATE_ON_SHUTDOWN": "False",
            "GATE_LOG_LEVEL": "Debug",
            "GATE_RESYNC_SECONDS": "0",
            "GATE_TOKEN_DIR": "/tokens",
        }
    )

    assert settings.mode is GateMode.ANY
    assert settings.write is False
    assert settings.events is False
    assert settings.event_driven is False
    assert settings.on_shutdown is ShutdownPolicy.FALSE
    assert settings.log_level == "debug"
    assert settings.resync == 0
    assert settings.api.token_dir == Path("/tokens")


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        (":9779", None, 9779),
        (":0", None, 0),
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("localhost:1", "localhost", 1),
        ("[::1]:9779", "::1", 9779),
        ("[::]:65535", "::", 65535),
    ],
)
def test_http_address_accepts_host_port_forms(address: str, host: str | None, port: int) -> None:
    settings = load({**LOG, "GATE_HTTP_ADDRESS": address})

    assert (settings.http_host, settings.http_port) == (host, port)


def test_fractional_seconds_and_thresholds_override_the_builtin_timing() -> None:
    settings = load(
        {
            **LOG,
            "GATE_INITIAL_DELAY_SECONDS": "0.5",
            "GATE_PERIOD_SECONDS": "0.25",
            "GATE_TIMEOUT_SECONDS": ".1",
            "GATE_SUCCESS_THRESHOLD": "2",
            "GATE_FAILURE_THRESHOLD": "+5",
        }
    )

    assert settings.defaults == Timing(
        initial_delay=0.5, period=0.25, timeout=0.1, success_threshold=2, failure_threshold=5
    )
    assert settings.checks[0].timing == settings.defaults


def test_check_timing_is_merged_over_the_defaults() -> None:
    check = only_check(
        {
            **LOG,
            "GATE_PERIOD_SECONDS": "10",
            "GATE_FAILURE_THRESHOLD": "7",
            "CHECK_APP_TIMEOUT_SECONDS": "4",
            "CHECK_APP_SUCCESS_THRESHOLD": "3",
        }
    )

    assert check.timing == Timing(period=10, timeout=4, success_threshold=3, failure_threshold=7)


@pytest.mark.parametrize(
    ("env", "fast"),
    [(TCP, 0.1), (HTTP, 0.15), (LOG, 0.0), (FILE, 0.0), (EXEC, 0.0)],
    ids=["tcp", "http", "log", "file", "exec"],
)
def test_tcp_and_http_checks_probe_fast_by_default_and_the_other_kinds_never(
    env: dict[str, str], fast: float
) -> None:
    settings = load(env)

    assert settings.fast_period is None
    assert settings.checks[0].timing == Timing(fast_period=fast)


def test_the_fast_period_is_set_for_all_checks_or_one_and_0_turns_it_off() -> None:
    env = {
        **TCP,
        "CHECK_WEB_KIND": "http",
        "CHECK_WEB_URL": "http://127.0.0.1/",
        "CHECK_OFF_KIND": "tcp",
        "CHECK_OFF_ADDRESS": ":1",
        "CHECK_OFF_FAST_PERIOD_SECONDS": "0",
        "CHECK_LOG_KIND": "log",
        "CHECK_LOG_PATH": "/l",
        "CHECK_LOG_PATTERN": "x",
        "GATE_FAST_PERIOD_SECONDS": "0.5",
    }

    settings = load(env)

    assert settings.fast_period == 0.5
    fast = {check.id: check.timing.fast_period for check in settings.checks}
    assert fast == {"APP": 0.5, "LOG": 0.0, "OFF": 0.0, "WEB": 0.5}


def test_the_builtin_fast_period_yields_to_a_period_that_is_as_short() -> None:
    env = {**TCP, "GATE_PERIOD_SECONDS": "0.1", "GATE_TIMEOUT_SECONDS": "0.05"}

    assert only_check(env).timing.fast_period == 0.0
    http = {**HTTP, "CHECK_APP_PERIOD_SECONDS": "0.3", "CHECK_APP_TIMEOUT_SECONDS": "0.2"}
    assert only_check(http).timing.fast_period == 0.15
    http = {**HTTP, "CHECK_APP_PERIOD_SECONDS": "0.15", "CHECK_APP_TIMEOUT_SECONDS": "0.1"}
    assert only_check(http).timing.fast_period == 0.0


def test_a_bad_fast_period_is_reported_with_the_other_problems_of_its_check() -> None:
    env = {"CHECK_APP_KIND": "tcp", "CHECK_APP_FAST_PERIOD_SECONDS": "soon"}

    assert [problem.split(":")[0] for problem in problems(env)] == [
        "CHECK_APP_ADDRESS",
        "CHECK_APP_FAST_PERIOD_SECONDS",
    ]


def test_log_check_parameters() -> None:
    check = only_check(
        {
            **LOG,
            "CHECK_APP_PATTERN": r"Server startup in \d+ ms",
            "CHECK_APP_FAIL_PATTERN": "SEVERE|Exception",
            "CHECK_APP_MAX_AGE_SECONDS": "30",
            "CHECK_APP_FROM": "end",
        }
    )

    assert check.params == LogParams(
        path=Path("/logs/app.log"),
        pattern=re.compile(r"Server startup in \d+ ms"),
        fail_pattern=re.compile("SEVERE|Exception"),
        max_age=30,
        start=LogStart.END,
    )
    assert check.label == "log APP"


def test_a_log_check_without_a_path_follows_the_output_of_its_container() -> None:
    check = only_check({**without(LOG, "CHECK_APP_PATH"), "CHECK_APP_CONTAINER": "tomcat"})

    assert check.params == LogParams(path=None, pattern=re.compile("started"), output_of="tomcat")
    assert isinstance(check.params, LogParams)
    assert check.params.follows_output
    assert check.container == "tomcat"


def test_a_log_check_with_a_path_and_a_container_reads_the_file() -> None:
    check = only_check({**LOG, "CHECK_APP_CONTAINER": "tomcat"})

    assert isinstance(check.params, LogParams)
    assert check.params.path == Path("/logs/app.log")
    assert not check.params.follows_output


def test_a_log_check_needs_a_path_or_a_container() -> None:
    (problem,) = problems(without(LOG, "CHECK_APP_PATH"))

    assert problem.startswith("CHECK_APP_PATH: required for log checks: the log file; or")
    assert "set CHECK_APP_CONTAINER to follow that container's output" in problem


def test_a_containers_output_is_not_read_in_probe_only_mode() -> None:
    env = {**without(LOG, "CHECK_APP_PATH"), "CHECK_APP_CONTAINER": "app", "GATE_WRITE": "false"}

    (problem,) = problems(env)
    assert problem.startswith("CHECK_APP_CONTAINER: without CHECK_APP_PATH the check follows")
    assert "probe-only mode (GATE_WRITE=false) does not use" in problem


@pytest.mark.parametrize(
    ("address", "host", "port", "unix_path"),
    [
        ("db:5432", "db", 5432, None),
        ("10.0.0.7:1", "10.0.0.7", 1, None),
        ("[fe80::1]:80", "fe80::1", 80, None),
        (":8080", "127.0.0.1", 8080, None),
        ("unix:/run/app.sock", None, None, "/run/app.sock"),
    ],
)
def test_tcp_address_forms(address: str, host: str, port: int, unix_path: str | None) -> None:
    params = only_check({**TCP, "CHECK_APP_ADDRESS": address}).params

    assert params == TcpParams(host=host, port=port, unix_path=unix_path)


def test_tcp_send_escapes_become_bytes_and_expect_is_a_bytes_pattern() -> None:
    params = only_check(
        {**TCP, "CHECK_APP_SEND": r"PING\r\n\t\x00\xff\\é", "CHECK_APP_EXPECT": r"^\+PONG"}
    ).params

    assert isinstance(params, TcpParams)
    assert params.send == b"PING\r\n\t\x00\xff\\" + "é".encode()
    assert params.expect == re.compile(rb"^\+PONG")


def test_file_check_parameters() -> None:
    present = only_check({**FILE, "CHECK_APP_CONTAINS": "ok", "CHECK_APP_MAX_AGE_SECONDS": "2.5"})
    absent = only_check({**FILE, "CHECK_APP_STATE": "absent"})

    assert present.params == FileParams(
        path=Path("/run/ready"), contains=re.compile("ok"), max_age=2.5
    )
    assert absent.params == FileParams(path=Path("/run/ready"), state=FileState.ABSENT)


@pytest.mark.parametrize(
    ("status", "low", "high"), [(None, 200, 399), ("204", 204, 204), ("200 - 299", 200, 299)]
)
def test_http_check_status_is_a_code_or_range(status: str | None, low: int, high: int) -> None:
    env = {**HTTP, "CHECK_APP_BODY": '"status": *"UP"'}
    if status is not None:
        env["CHECK_APP_STATUS"] = status

    assert only_check(env).params == HttpParams(
        url="http://127.0.0.1:8080/health",
        status_min=low,
        status_max=high,
        body=re.compile('"status": *"UP"'),
    )


def test_exec_command_is_split_like_a_shell_without_one() -> None:
    command = """check --name 'my app' "$HOME" a\\ b"""

    params = only_check({**EXEC, "CHECK_APP_COMMAND": command}).params

    assert params == ExecParams(argv=("check", "--name", "my app", "$HOME", "a b"))


def test_checks_are_sorted_by_id_and_each_has_its_kind() -> None:
    env = {
        "CHECK_WEB_KIND": "http",
        "CHECK_WEB_URL": "https://example.com",
        "CHECK_DB2_KIND": "tcp",
        "CHECK_DB2_ADDRESS": ":5432",
        "CHECK_A_KIND": "exec",
        "CHECK_A_COMMAND": "true",
    }

    assert [(c.id, c.kind) for c in load(env).checks] == [
        ("A", CheckKind.EXEC),
        ("DB2", CheckKind.TCP),
        ("WEB", CheckKind.HTTP),
    ]


def test_checks_feed_the_default_gate_unless_they_name_their_own() -> None:
    settings = load(
        {
            **LOG,
            **{f"CHECK_DB_{k}": v for k, v in {"KIND": "tcp", "ADDRESS": ":5432"}.items()},
            "GATE_CONDITION_TYPE": "example.com/app-ready",
            "CHECK_DB_GATE": "example.com/db-ready",
        }
    )

    assert [(c.id, c.gate) for c in settings.checks] == [
        ("APP", "example.com/app-ready"),
        ("DB", "example.com/db-ready"),
    ]
    assert settings.gates == ("example.com/app-ready", "example.com/db-ready")


def test_checks_without_any_gate_feed_the_pods_only_readiness_gate() -> None:
    settings = load({**LOG, "CHECK_DB_KIND": "tcp", "CHECK_DB_ADDRESS": ":5432"})

    assert settings.gates == (None,)


def test_empty_variables_count_as_not_set() -> None:
    settings = load({**LOG, "GATE_PERIOD_SECONDS": "", "GATE_CONDITION_TYPE": "", "POD_UID": ""})

    assert settings.defaults.period == 2
    assert settings.condition_type is None


def test_the_process_environment_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_MODE", "bogus")
    monkeypatch.setenv("GATE_NOT_A_SETTING", "1")

    assert load(LOG).mode is GateMode.ALL


# --- identity and API access --------------------------------------------------------------------


def test_in_a_cluster_the_identity_and_api_come_from_the_environment() -> None:
    settings = load({**LOG, **IN_CLUSTER}, require_api=True)

    assert settings.identity == Identity(
        pod_name="shop-0", namespace="shop", pod_uid="0c7a5c1e-7d47-4c3b-9d6e-1f3f0e0b7a11"
    )
    assert settings.api == ApiAccess(service_host="10.96.0.1", service_port="443")
    assert settings.warnings == ()


def test_missing_pod_name_shows_the_downward_api_snippet_to_add() -> None:
    env = {**LOG, **IN_CLUSTER}
    del env["POD_NAME"]

    with pytest.raises(ConfigError) as caught:
        load(env, require_api=True)

    [problem] = caught.value.problems
    assert problem.subject == "POD_NAME"
    assert (
        "env:\n- name: POD_NAME\n  valueFrom:\n    fieldRef:\n      fieldPath: metadata.name"
        in problem.message
    )
    assert "GATE_WRITE=false" in problem.message


def test_missing_namespace_and_name_are_two_problems_with_their_own_snippets() -> None:
    env = {**LOG, "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    found = problems(env, require_api=True)

    assert [text.split(":")[0] for text in found] == ["POD_NAME", "POD_NAMESPACE"]
    assert "fieldPath: metadata.namespace" in found[1]
    assert env_snippet("POD_UID").endswith("fieldPath: metadata.uid")


def test_a_missing_pod_uid_is_only_a_warning_with_its_snippet() -> None:
    env = {**LOG, **IN_CLUSTER}
    del env["POD_UID"]

    settings = load(env, require_api=True)

    assert settings.identity == Identity(pod_name="shop-0", namespace="shop")
    [warning] = settings.warnings
    assert warning.startswith("POD_UID is not set")
    assert env_snippet("POD_UID") in warning


def test_without_api_access_the_problem_explains_both_ways_and_write_false() -> None:
    env = {**LOG, "POD_NAME": "shop-0", "POD_NAMESPACE": "shop"}

    [problem] = problems(env, require_api=True)

    assert problem.startswith("KUBERNETES_SERVICE_HOST: not set, and neither is KUBECONFIG")
    assert "set KUBECONFIG" in problem
    assert "GATE_WRITE=false" in problem


def test_writing_disabled_needs_neither_identity_nor_api() -> None:
    settings = load({**LOG, "GATE_WRITE": "false"}, require_api=True)

    assert settings.identity is None
    assert settings.warnings == ()


def test_identity_and_api_are_not_required_when_the_caller_needs_no_api() -> None:
    assert load(LOG, require_api=False).identity is None


def test_kubeconfig_list_takes_the_first_file_that_exists(tmp_path: Path) -> None:
    second = tmp_path / "second"
    second.write_text("apiVersion: v1\n")
    env = {**LOG, "POD_NAME": "a", "POD_NAMESPACE": "b"}

    found = load({**env, "KUBECONFIG": f"{tmp_path / 'first'}:{second}"}, require_api=True)
    neither = load({**env, "KUBECONFIG": f"{tmp_path / 'x'}::{tmp_path / 'y'}"}, require_api=True)

    assert found.api.kubeconfig == second
    assert neither.api.kubeconfig == tmp_path / "x"


def test_service_host_without_port_is_a_problem_without_kubeconfig() -> None:
    env = {**LOG, **IN_CLUSTER}
    del env["KUBERNETES_SERVICE_PORT"]

    [problem] = problems(env, require_api=True)

    assert problem.startswith("KUBERNETES_SERVICE_PORT: required with KUBERNETES_SERVICE_HOST")


# --- malformed configurations -------------------------------------------------------------------


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


MALFORMED = [
    ({**LOG, "GATE_PERIOD_SECONDS": "-1"}, "GATE_PERIOD_SECONDS", 'seconds > 0, got "-1"'),
    ({**LOG, "GATE_PERIOD_SECONDS": "0"}, "GATE_PERIOD_SECONDS", "seconds > 0"),
    ({**LOG, "GATE_TIMEOUT_SECONDS": "nan"}, "GATE_TIMEOUT_SECONDS", 'seconds > 0, got "nan"'),
    ({**LOG, "GATE_INITIAL_DELAY_SECONDS": "inf"}, "GATE_INITIAL_DELAY_SECONDS", "seconds >= 0"),
    ({**LOG, "GATE_PERIOD_SECONDS": "1e999"}, "GATE_PERIOD_SECONDS", "too large"),
    ({**LOG, "GATE_PERIOD_SECONDS": "5s"}, "GATE_PERIOD_SECONDS", "without a unit"),
    ({**LOG, "GATE_SUCCESS_THRESHOLD": "0"}, "GATE_SUCCESS_THRESHOLD", "a whole number >= 1"),
    ({**LOG, "GATE_FAILURE_THRESHOLD": "1.5"}, "GATE_FAILURE_THRESHOLD", "a whole number >= 1"),
    ({**LOG, "GATE_FAILURE_THRESHOLD": "9" * 5000}, "GATE_FAILURE_THRESHOLD", "too large"),
    ({**LOG, "GATE_TIMEOUT_SECONDS": "2"}, "GATE_TIMEOUT_SECONDS", "shorter than the period"),
    ({**LOG, "GATE_PERIOD_SECONDS": "0.5"}, "GATE_PERIOD_SECONDS", "timeout 1 s (default)"),
    ({**TCP, "GATE_FAST_PERIOD_SECONDS": "-1"}, "GATE_FAST_PERIOD_SECONDS", "seconds >= 0"),
    ({**TCP, "GATE_FAST_PERIOD_SECONDS": "100ms"}, "GATE_FAST_PERIOD_SECONDS", "without a unit"),
    (
        {**TCP, "GATE_FAST_PERIOD_SECONDS": "2"},
        "GATE_FAST_PERIOD_SECONDS",
        "expected a fast period shorter than the period (or 0: no fast probes), got fast period "
        "2 s (GATE_FAST_PERIOD_SECONDS) and period 2 s (default)",
    ),
    (
        {**TCP, "GATE_PERIOD_SECONDS": "5", "CHECK_APP_FAST_PERIOD_SECONDS": "6"},
        "CHECK_APP_FAST_PERIOD_SECONDS",
        "got fast period 6 s (CHECK_APP_FAST_PERIOD_SECONDS) and period 5 s (GATE_PERIOD_SECONDS)",
    ),
    (
        {
            **HTTP,
            "GATE_FAST_PERIOD_SECONDS": "0.5",
            "CHECK_APP_PERIOD_SECONDS": "0.5",
            "CHECK_APP_TIMEOUT_SECONDS": "0.2",
        },
        "CHECK_APP_PERIOD_SECONDS",
        "fast period 0.5 s (GATE_FAST_PERIOD_SECONDS) and period 0.5 s (CHECK_APP_PERIOD_SECONDS)",
    ),
    ({**TCP, "CHECK_APP_FAST_PERIOD_SECONDS": "x"}, "CHECK_APP_FAST_PERIOD_SECONDS", "seconds"),
    (
        {**LOG, "CHECK_APP_FAST_PERIOD_SECONDS": "0.1"},
        "CHECK_APP_FAST_PERIOD_SECONDS",
        "applies to tcp or http checks, but CHECK_APP_KIND is log",
    ),
    (
        {**TCP, "GATE_FAST_PERIOD": "0.1"},
        "GATE_FAST_PERIOD",
        "did you mean GATE_FAST_PERIOD_SECONDS",
    ),
    ({**LOG, "GATE_MODE": "most"}, "GATE_MODE", 'expected all or any, got "most"'),
    ({**LOG, "GATE_WRITE": "yes"}, "GATE_WRITE", 'expected true or false, got "yes"'),
    ({**LOG, "GATE_EVENTS": "1"}, "GATE_EVENTS", "expected true or false"),
    ({**LOG, "GATE_EVENT_DRIVEN": "no"}, "GATE_EVENT_DRIVEN", "expected true or false"),
    ({**LOG, "GATE_ON_SHUTDOWN": "remove"}, "GATE_ON_SHUTDOWN", "expected keep or false"),
    ({**LOG, "GATE_LOG_LEVEL": "verbose"}, "GATE_LOG_LEVEL", "debug, info, warning or error"),
    ({**LOG, "GATE_HTTP_ADDRESS": "9779"}, "GATE_HTTP_ADDRESS", "no :port"),
    ({**LOG, "GATE_HTTP_ADDRESS": "::1:9779"}, "GATE_HTTP_ADDRESS", "IPv6 address in brackets"),
    ({**LOG, "GATE_HTTP_ADDRESS": ":70000"}, "GATE_HTTP_ADDRESS", "from 0 to 65535"),
    ({**LOG, "GATE_HTTP_ADDRESS": "a b:80"}, "GATE_HTTP_ADDRESS", "not a host name"),
    ({**LOG, "GATE_RESYNC_SECONDS": "-5"}, "GATE_RESYNC_SECONDS", "seconds >= 0"),
    ({**LOG, "GATE_CONDITION_TYPE": "Ready"}, "GATE_CONDITION_TYPE", "Kubernetes sets Ready"),
    (
        {**LOG, "GATE_CONDITION_TYPE": "ContainersReady"},
        "GATE_CONDITION_TYPE",
        "a condition type of your own",
    ),
    ({**LOG, "GATE_CONDITION_TYPE": "Example.com/ready"}, "GATE_CONDITION_TYPE", "DNS subdomain"),
    ({**LOG, "GATE_CONDITION_TYPE": "a/b/c"}, "GATE_CONDITION_TYPE", "at most one /"),
    ({**LOG, "GATE_CONDITION_TYPE": "-ready"}, "GATE_CONDITION_TYPE", "must be 1-63"),
    ({**LOG, "GATE_CONDITION_TYPE": "x/" + "a" * 64}, "GATE_CONDITION_TYPE", "after /"),
    ({**LOG, "GATE_TOKEN_DIR": "tokens"}, "GATE_TOKEN_DIR", "expected an absolute path"),
    ({**LOG, "GATE_FOO": "1"}, "GATE_FOO", "unknown setting"),
    ({**LOG, "GATE_PERIOD": "3"}, "GATE_PERIOD", "did you mean GATE_PERIOD_SECONDS?"),
    ({**LOG, "CHECK_APP_KIND": "lgo"}, "CHECK_APP_KIND", "did you mean log?"),
    (without(LOG, "CHECK_APP_KIND"), "CHECK_APP_KIND", "required: log, tcp, file, http or exec"),
    (without(LOG, "CHECK_APP_PATTERN"), "CHECK_APP_PATTERN", "required for log checks"),
    ({**LOG, "CHECK_APP_PATH": "app.log"}, "CHECK_APP_PATH", "expected an absolute path"),
    (
        {**LOG, "CHECK_APP_PATTERN": "started ("},
        "CHECK_APP_PATTERN",
        'got "started (": missing ), unterminated subpattern at position 8',
    ),
    ({**LOG, "CHECK_APP_FAIL_PATTERN": "[a"}, "CHECK_APP_FAIL_PATTERN", "unterminated character"),
    ({**LOG, "CHECK_APP_FROM": "middle"}, "CHECK_APP_FROM", "expected start or end"),
    ({**LOG, "CHECK_APP_MAX_AGE_SECONDS": "0"}, "CHECK_APP_MAX_AGE_SECONDS", "seconds > 0"),
    (
        {**LOG, "CHECK_APP_URL": "http://x"},
        "CHECK_APP_URL",
        "applies to http checks, but CHECK_APP_KIND is log",
    ),
    ({**LOG, "CHECK_APP_PATERN": "x"}, "CHECK_APP_PATERN", "did you mean CHECK_APP_PATTERN?"),
    ({**LOG, "CHECK_APP_PORT": "8080"}, "CHECK_APP_PORT", "which takes CHECK_APP_PATH, _PATTERN"),
    ({**LOG, "CHECK_APP_GATE": "PodScheduled"}, "CHECK_APP_GATE", "Kubernetes sets PodScheduled"),
    (
        {**LOG, "CHECK_APP_TIMEOUT_SECONDS": "3"},
        "CHECK_APP_TIMEOUT_SECONDS",
        "got timeout 3 s (CHECK_APP_TIMEOUT_SECONDS) and period 2 s (default)",
    ),
    (
        {**LOG, "GATE_PERIOD_SECONDS": "10", "CHECK_APP_TIMEOUT_SECONDS": "10"},
        "CHECK_APP_TIMEOUT_SECONDS",
        "period 10 s (GATE_PERIOD_SECONDS)",
    ),
    ({**LOG, "CHECK_APP_PERIOD_SECONDS": "0.5"}, "CHECK_APP_PERIOD_SECONDS", "shorter than"),
    (without(TCP, "CHECK_APP_ADDRESS"), "CHECK_APP_ADDRESS", "required for tcp checks"),
    ({**TCP, "CHECK_APP_ADDRESS": "db:0"}, "CHECK_APP_ADDRESS", "from 1 to 65535"),
    ({**TCP, "CHECK_APP_ADDRESS": "db:http"}, "CHECK_APP_ADDRESS", "from 1 to 65535"),
    ({**TCP, "CHECK_APP_ADDRESS": "unix:app.sock"}, "CHECK_APP_ADDRESS", "an absolute path"),
    ({**TCP, "CHECK_APP_ADDRESS": "unix:/" + "s" * 200}, "CHECK_APP_ADDRESS", "at most 107"),
    ({**TCP, "CHECK_APP_ADDRESS": "[db]:80"}, "CHECK_APP_ADDRESS", "not an IPv6 address"),
    ({**TCP, "CHECK_APP_SEND": r"PING\q"}, "CHECK_APP_SEND", r"unknown escape \q at position 4"),
    ({**TCP, "CHECK_APP_SEND": "PING\\"}, "CHECK_APP_SEND", "a lone \\ at the end"),
    ({**TCP, "CHECK_APP_SEND": r"\x4"}, "CHECK_APP_SEND", r"\x needs two hex digits"),
    ({**TCP, "CHECK_APP_EXPECT": "+OK"}, "CHECK_APP_EXPECT", "nothing to repeat at position 0"),
    (
        {**TCP, "CHECK_APP_PATH": "/x"},
        "CHECK_APP_PATH",
        "applies to log or file checks, but CHECK_APP_KIND is tcp",
    ),
    ({**FILE, "CHECK_APP_STATE": "gone"}, "CHECK_APP_STATE", "expected present or absent"),
    (
        {**FILE, "CHECK_APP_STATE": "absent", "CHECK_APP_CONTAINS": "x"},
        "CHECK_APP_CONTAINS",
        "applies to a file that is present, but CHECK_APP_STATE is absent",
    ),
    (
        {**FILE, "CHECK_APP_STATE": "absent", "CHECK_APP_MAX_AGE_SECONDS": "5"},
        "CHECK_APP_MAX_AGE_SECONDS",
        "CHECK_APP_STATE is absent",
    ),
    ({**HTTP, "CHECK_APP_URL": "ftp://host/x"}, "CHECK_APP_URL", "http:// or https:// URL"),
    ({**HTTP, "CHECK_APP_URL": "http:///path"}, "CHECK_APP_URL", "URL with a host"),
    ({**HTTP, "CHECK_APP_URL": "http://h:99999/"}, "CHECK_APP_URL", "out of range"),
    ({**HTTP, "CHECK_APP_URL": "http://h/a b"}, "CHECK_APP_URL", "a URL has no spaces"),
    ({**HTTP, "CHECK_APP_STATUS": "600"}, "CHECK_APP_STATUS", "within 100-599"),
    ({**HTTP, "CHECK_APP_STATUS": "399-200"}, "CHECK_APP_STATUS", "the range is empty"),
    ({**HTTP, "CHECK_APP_STATUS": "2xx"}, "CHECK_APP_STATUS", "e.g. 200 or 200-399"),
    ({**HTTP, "CHECK_APP_BODY": "*"}, "CHECK_APP_BODY", 'got "*": nothing to repeat'),
    ({**EXEC, "CHECK_APP_COMMAND": "check 'ready"}, "CHECK_APP_COMMAND", "no closing quotation"),
    ({**EXEC, "CHECK_APP_COMMAND": "   "}, "CHECK_APP_COMMAND", "there is no command"),
    ({**LOG, "CHECK_APPKIND": "log"}, "CHECK_APPKIND", "did you mean CHECK_APP_KIND?"),
    ({**LOG, "CHECK__KIND": "log"}, "CHECK__KIND", "not a check variable"),
    (
        {**LOG, "CHECK_MY_APP_KIND": "log"},
        "CHECK_MY_APP_KIND",
        "letters and digits, without _; did you mean CHECK_MYAPP_KIND?",
    ),
    ({**LOG, "CHECK_APP_X_PATTERN": "1"}, "CHECK_APP_X_PATTERN", "did you mean CHECK_APP_PATTERN?"),
    ({"GATE_MODE": "any"}, "", "no checks configured: set CHECK_<ID>_KIND"),
    (
        {**LOG, "CHECK_DB_KIND": "tcp", "CHECK_DB_ADDRESS": ":1", "CHECK_DB_GATE": "x.io/db"},
        "CHECK_APP_GATE",
        "required because other checks name a gate (x.io/db)",
    ),
    (
        {**LOG, "GATE_CONFIG_FILE": "/nonexistent/gate.yaml"},
        "GATE_CONFIG_FILE (/nonexistent/gate.yaml)",
        "cannot read the config file: No such file or directory",
    ),
]


@pytest.mark.parametrize(
    ("env", "subject", "phrase"), MALFORMED, ids=[row[1] or "none" for row in MALFORMED]
)
def test_each_malformed_configuration_is_one_precise_problem(
    env: dict[str, str], subject: str, phrase: str
) -> None:
    [problem] = problems(env)

    assert problem.startswith(f"{subject}: " if subject else "")
    assert phrase in problem


def test_every_problem_is_reported_at_once_one_per_line() -> None:
    env = {
        **LOG,
        "GATE_PERIOD_SECONDS": "-1",
        "GATE_MODE": "most",
        "CHECK_APP_PATTERN": "(",
        "CHECK_DB_KIND": "tcp",
        "CHECK_DB_ADDRESS": "nowhere",
        "GATE_PERIOD_SECOND": "2",
    }

    with pytest.raises(ConfigError) as caught:
        load(env)

    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "GATE_MODE",
        "GATE_PERIOD_SECONDS",
        "GATE_PERIOD_SECOND",
        "CHECK_APP_PATTERN",
        "CHECK_DB_ADDRESS",
    ]
    assert lines[1] == 'GATE_PERIOD_SECONDS: expected a number of seconds > 0, got "-1"'
    assert lines[2].endswith("did you mean GATE_PERIOD_SECONDS?")
    assert len(caught.value.problems) == len(lines)


def test_problems_in_several_checks_do_not_hide_each_other() -> None:
    env = {
        "CHECK_A_KIND": "log",
        "CHECK_B_KIND": "http",
        "CHECK_B_URL": "gopher://x",
        "CHECK_C_KIND": "exec",
    }

    found = problems(env)

    assert [text.split(":")[0] for text in found] == [
        "CHECK_A_PATH",
        "CHECK_A_PATTERN",
        "CHECK_B_URL",
        "CHECK_C_COMMAND",
    ]


def test_an_invalid_default_does_not_cause_follow_on_problems() -> None:
    env = {**LOG, "GATE_TIMEOUT_SECONDS": "x", "CHECK_APP_PERIOD_SECONDS": "0.5"}

    assert [p.split(":")[0] for p in problems(env)] == ["GATE_TIMEOUT_SECONDS"]


def test_an_invalid_default_gate_does_not_make_checks_ambiguous() -> None:
    env = {
        **LOG,
        "GATE_CONDITION_TYPE": "Ready",
        "CHECK_DB_KIND": "tcp",
        "CHECK_DB_ADDRESS": ":1",
        "CHECK_DB_GATE": "x.io/db",
    }

    assert [p.split(":")[0] for p in problems(env)] == ["GATE_CONDITION_TYPE"]


def test_values_are_quoted_on_one_line_as_written() -> None:
    [problem] = problems({**LOG, "CHECK_APP_PATTERN": "a\\d(\nb"})

    assert 'got "a\\d(\\nb"' in problem
    assert "\n" not in problem


# --- service links --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATE_SERVICE_HOST", "10.0.0.11"),
        ("GATE_SERVICE_PORT", "9779"),
        ("GATE_SERVICE_PORT_HTTP_METRICS", "9779"),
        ("GATE_PORT", "tcp://10.0.0.11:9779"),
        ("GATE_PORT_9779_TCP", "tcp://10.0.0.11:9779"),
        ("GATE_PORT_9779_TCP_PROTO", "tcp"),
        ("GATE_PORT_9779_TCP_PORT", "9779"),
        ("GATE_PORT_9779_TCP_ADDR", "10.0.0.11"),
        ("GATE_PORT_53_UDP_ADDR", "10.0.0.11"),
        ("GATE_PORT_9_SCTP", "sctp://10.0.0.11:9"),
        ("GATE_KEEPER_SERVICE_HOST", "10.0.0.12"),
        ("CHECK_APP_SERVICE_HOST", "10.0.0.13"),
        ("CHECK_APP_PORT", "tcp://10.0.0.13:80"),
        ("CHECK_APP_PORT_80_TCP_PROTO", "tcp"),
        ("CHECK_SERVICE_PORT", "80"),
        ("CHECK_MY_APP_2_SERVICE_PORT_WEB", "80"),
    ],
)
def test_variables_kubernetes_injects_for_services_are_ignored(name: str, value: str) -> None:
    assert load({**LOG, name: value}).checks == load(LOG).checks


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATE_PORT", "9779"),
        ("CHECK_APP_PORT", "8080"),
        ("GATE_SERVICE_HOSTS", "x"),
        ("GATE_PORT_80_HTTP", "tcp://1.2.3.4:80"),
        ("GATE_PORT_80_TCP_HOST", "1.2.3.4"),
    ],
)
def test_names_that_only_resemble_service_links_are_still_reported(name: str, value: str) -> None:
    [problem] = problems({**LOG, name: value})

    assert problem.startswith(f"{name}: unknown")


# --- the config file -----------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gate.yaml"
    path.write_text(text)
    return str(path)


EXAMPLE = r"""
conditionType: example.com/legacy-ready
periodSeconds: 5
timeoutSeconds: 2.5
write: false
events: no
checks:
  APP:
    kind: log
    path: /logs/catalina.out
    pattern: 'Server startup in \d+ ms'
    failureThreshold: 1
  DB2:
    kind: tcp
    address: ":5432"
    send: '\x00\r\n'
"""


def test_the_config_file_is_read_like_the_environment(tmp_path: Path) -> None:
    file = write_config(tmp_path, EXAMPLE)

    settings = load({"GATE_CONFIG_FILE": file})

    assert replace(settings, config_file=None) == load(
        {
            "GATE_CONDITION_TYPE": "example.com/legacy-ready",
            "GATE_PERIOD_SECONDS": "5",
            "GATE_TIMEOUT_SECONDS": "2.5",
            "GATE_WRITE": "false",
            "GATE_EVENTS": "false",
            "CHECK_APP_KIND": "log",
            "CHECK_APP_PATH": "/logs/catalina.out",
            "CHECK_APP_PATTERN": r"Server startup in \d+ ms",
            "CHECK_APP_FAILURE_THRESHOLD": "1",
            "CHECK_DB2_KIND": "tcp",
            "CHECK_DB2_ADDRESS": ":5432",
            "CHECK_DB2_SEND": r"\x00\r\n",
        }
    )
    assert settings.config_file == Path(file)
    assert settings.checks[0].timing.failure_threshold == 1
    assert settings.checks[1].params == TcpParams(host="127.0.0.1", port=5432, send=b"\0\r\n")


def test_the_environment_overrides_the_config_file(tmp_path: Path) -> None:
    file = write_config(tmp_path, EXAMPLE)

    settings = load(
        {
            "GATE_CONFIG_FILE": file,
            "GATE_PERIOD_SECONDS": "7",
            "CHECK_APP_PATTERN": "ready",
            "CHECK_APP_FAILURE_THRESHOLD": "",
        }
    )

    assert settings.defaults.period == 7
    assert settings.checks[0].params == LogParams(
        path=Path("/logs/catalina.out"), pattern=re.compile("ready")
    )
    assert settings.checks[0].timing.failure_threshold == 1


def test_problems_with_values_from_the_file_name_the_variable_and_the_key(tmp_path: Path) -> None:
    file = write_config(tmp_path, EXAMPLE.replace(r"\d+ ms'", r"\d+ ms ('"))

    [problem] = problems({"GATE_CONFIG_FILE": file})

    assert problem.startswith(f"CHECK_APP_PATTERN (checks.APP.pattern in {file}): ")
    assert "missing ), unterminated subpattern" in problem


def test_a_value_overridden_by_the_environment_is_reported_as_the_environments(
    tmp_path: Path,
) -> None:
    file = write_config(tmp_path, EXAMPLE)

    [problem] = problems({"GATE_CONFIG_FILE": file, "GATE_PERIOD_SECONDS": "-2"})

    assert problem.startswith('GATE_PERIOD_SECONDS: expected a number of seconds > 0, got "-2"')


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("perodSeconds: 5", "perodSeconds in {file}: unknown setting; did you mean periodSeconds?"),
        (
            "period_seconds: 5",
            "period_seconds in {file}: unknown setting; did you mean periodSeconds?",
        ),
        (
            "PERIOD_SECONDS: 5",
            "PERIOD_SECONDS in {file}: unknown setting; did you mean periodSeconds?",
        ),
        ("chekcs: {}", "chekcs in {file}: unknown setting; did you mean checks?"),
        ("confgFile: x", "confgFile in {file}: unknown setting"),
        (
            "checks: {APP: {patern: x}}",
            "checks.APP.patern in {file}: unknown parameter for a log check; "
            "did you mean checks.APP.pattern?",
        ),
        (
            "checks: {APP: {url: 'http://x'}}",
            "CHECK_APP_URL (checks.APP.url in {file}): applies to http checks, "
            "but CHECK_APP_KIND is log",
        ),
        (
            "configFile: /other.yaml",
            "configFile in {file}: not allowed in the file: set GATE_CONFIG_FILE in the",
        ),
        ("podName: x", "podName in {file}: not allowed in the file: set POD_NAME"),
        ("POD_NAMESPACE: x", "POD_NAMESPACE in {file}: not allowed in the file"),
        ("kubeconfig: /k", "kubeconfig in {file}: not allowed in the file: set KUBECONFIG"),
        ("kubernetesServiceHost: h", "kubernetesServiceHost in {file}: not allowed in the file"),
        ("mode: [all]", "mode in {file}: expected a string, number or boolean, got a list"),
        ("mode: {a: 1}", "mode in {file}: expected a string, number or boolean, got a mapping"),
        ("mode: 2024-01-01", "mode in {file}: expected a string, number or boolean, got a date"),
        ("1: x", "1 in {file}: expected a setting's name as the key"),
        ("checks: [APP]", "checks in {file}: expected a mapping of check IDs, got a list"),
        ("checks: {my-app: {kind: log}}", "checks.my-app in {file}: a check ID is text of letters"),
        (
            "checks: {2: {kind: log}}",
            "checks.2 in {file}: a check ID is text of letters and digits",
        ),
        ("checks:", "checks in {file}: expected a mapping of check IDs, got nothing"),
        (
            "podLabels: x",
            "podLabels in {file}: not allowed in the file: set POD_* in the environment",
        ),
        (
            "checks: {APP: {1: x}}",
            "checks.APP.1 in {file}: unknown check parameter; keys are camelCase",
        ),
        ("checks: {DB: {}}", "checks.DB in {file}: expected a mapping of the check's settings"),
        ("checks: {DB: x}", "checks.DB in {file}: expected a mapping of the check's settings"),
        ("- a\n- b", "GATE_CONFIG_FILE ({file}): expected a mapping of settings, got a list"),
        ("just text", "GATE_CONFIG_FILE ({file}): expected a mapping of settings, got a str"),
        (
            "a: [1\nb: 2",
            "GATE_CONFIG_FILE ({file}): invalid YAML: line 2, column 2: expected ',' or ']'",
        ),
        ("a: 1\n---\nb: 2", "GATE_CONFIG_FILE ({file}): invalid YAML: line 2, column 1:"),
        ("a: *nope", "GATE_CONFIG_FILE ({file}): invalid YAML: line 1, column 4: found undefined"),
    ],
)
def test_config_file_problems_are_in_the_files_own_spelling(
    tmp_path: Path, text: str, problem: str
) -> None:
    file = write_config(tmp_path, text)

    [found] = problems({"GATE_CONFIG_FILE": file, **LOG})

    assert found.startswith(problem.format(file=file))


def test_an_unreadable_config_file_is_one_problem_without_follow_ons(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"mode: \xff\xfe\n")

    found = problems({"GATE_CONFIG_FILE": str(tmp_path / "bad.yaml")})
    missing = problems({"GATE_CONFIG_FILE": str(tmp_path / "missing.yaml")})
    directory = problems({"GATE_CONFIG_FILE": str(tmp_path)})

    assert found == [
        f"GATE_CONFIG_FILE ({tmp_path}/bad.yaml): cannot read the config file: it is not UTF-8 text"
    ]
    assert missing == [
        f"GATE_CONFIG_FILE ({tmp_path}/missing.yaml): cannot read the config "
        "file: No such file or directory"
    ]
    assert directory == [
        f"GATE_CONFIG_FILE ({tmp_path}): cannot read the config file: Is a directory"
    ]


def test_an_empty_config_file_leaves_everything_to_the_environment(tmp_path: Path) -> None:
    file = write_config(tmp_path, "# nothing yet\n")

    assert load({"GATE_CONFIG_FILE": file, **LOG}).checks == load(LOG).checks


def test_file_scalars_become_the_text_a_variable_would_hold(tmp_path: Path) -> None:
    file = write_config(
        tmp_path,
        "resyncSeconds: 0\nwrite: true\nonShutdown: false\nhttpAddress: ':0'\n"
        "checks:\n  APP:\n    kind: log\n    path: /logs/app.log\n    pattern: started\n"
        "    successThreshold: 2\n    maxAgeSeconds: 1.5\n",
    )

    settings = load({"GATE_CONFIG_FILE": file})

    assert settings.checks[0].timing.success_threshold == 2
    assert settings.checks[0].params == LogParams(
        path=Path("/logs/app.log"), pattern=re.compile("started"), max_age=1.5
    )
    assert settings.resync == 0
    assert settings.write is True
    assert settings.on_shutdown is ShutdownPolicy.FALSE
    assert settings.http_port == 0


# --- describe ------------------------------------------------------------------------------------


def test_describe_is_json_with_patterns_as_text_and_bytes_escaped(tmp_path: Path) -> None:
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "token").write_text("s3cr3t-token")
    env = {
        **TCP,
        "CHECK_APP_SEND": r"PING\r\n\x00",
        "CHECK_APP_EXPECT": r"^\+PONG",
        "CHECK_WEB_KIND": "http",
        "CHECK_WEB_URL": "https://user:hunter2@example.com/health",
        "CHECK_WEB_STATUS": "204",
        "CHECK_LOG_KIND": "log",
        "CHECK_LOG_PATH": "/l",
        "CHECK_LOG_PATTERN": r"\d+",
        "GATE_TOKEN_DIR": str(token_dir),
        "GATE_HTTP_ADDRESS": "[::1]:80",
        **IN_CLUSTER,
    }

    described = load(env, require_api=True).describe()
    text = json.dumps(described)

    checks = {check["id"]: check for check in cast(list[dict[str, object]], described["checks"])}
    assert checks["APP"]["send"] == r"PING\r\n\x00"
    assert checks["APP"]["expect"] == r"^\+PONG"
    assert checks["APP"]["address"] == "db:5432"
    assert checks["APP"]["timing"]["fast_period_seconds"] == 0.1  # type: ignore[index]
    assert checks["LOG"]["timing"]["fast_period_seconds"] == 0.0  # type: ignore[index]
    assert described["defaults"]["fast_period_seconds"] is None  # type: ignore[index]
    assert checks["LOG"]["pattern"] == r"\d+"
    assert checks["WEB"]["status"] == "204"
    assert checks["WEB"]["url"] == "https://user:***@example.com/health"
    assert described["http_address"] == "[::1]:80"
    assert described["identity"] == {
        "pod_name": "shop-0",
        "namespace": "shop",
        "pod_uid": IN_CLUSTER["POD_UID"],
    }
    assert "hunter2" not in text
    assert "s3cr3t" not in text
    assert json.loads(text) == described


# --- the start pattern --------------------------------------------------------------------------


def test_a_log_check_takes_a_start_pattern() -> None:
    env = {**LOG, "CHECK_APP_START_PATTERN": r"Starting Servlet engine"}
    check = only_check(env)
    assert isinstance(check.params, LogParams)
    assert check.params.start_pattern == re.compile("Starting Servlet engine")
    [described] = cast(list[dict[str, object]], load(env).describe()["checks"])
    assert described["start_pattern"] == "Starting Servlet engine"
    [without] = cast(list[dict[str, object]], load(LOG).describe()["checks"])
    assert without["start_pattern"] is None


def test_a_bad_start_pattern_or_one_on_another_kind_is_a_problem() -> None:
    assert problems({**LOG, "CHECK_APP_START_PATTERN": "Starting ("}) == [
        "CHECK_APP_START_PATTERN: expected a regular expression (Python re syntax), got "
        '"Starting (": missing ), unterminated subpattern at position 9'
    ]
    assert problems({**FILE, "CHECK_APP_START_PATTERN": "Starting"}) == [
        "CHECK_APP_START_PATTERN: applies to log checks, but CHECK_APP_KIND is file"
    ]


# --- invisible characters -----------------------------------------------------------------------

FREE_TEXT = [
    ("CHECK_APP_PATH", LOG, "/logs/app.log"),
    ("CHECK_APP_PATTERN", LOG, "Server startup"),
    ("CHECK_APP_FAIL_PATTERN", LOG, "SEVERE"),
    ("CHECK_APP_START_PATTERN", LOG, "Starting"),
    ("CHECK_APP_PATH", FILE, "/run/app.lock"),
    ("CHECK_APP_CONTAINS", FILE, "ok"),
    ("CHECK_APP_URL", HTTP, "http://127.0.0.1:8080/health"),
    ("CHECK_APP_BODY", HTTP, "status: ready"),
    ("CHECK_APP_ADDRESS", TCP, "unix:/run/app.sock"),
    ("CHECK_APP_SEND", TCP, r"PING\r\n"),
    ("CHECK_APP_EXPECT", TCP, r"^\+PONG"),
    ("CHECK_APP_COMMAND", EXEC, "/bin/check --quick"),
    ("GATE_TOKEN_DIR", LOG, "/var/run/secrets/sa"),
]
INVISIBLE = [
    ("{}\r", "ends with a carriage return (\\r, U+000D)"),
    ("{}\u200b", "ends with a zero-width space (\\u200b, U+200B)"),
    ("\ufeff{}", "begins with a byte-order mark (\\ufeff, U+FEFF)"),
    ("{}\x00x", "contains a NUL character (\\x00, U+0000) as character"),
]


@pytest.mark.parametrize(("name", "base", "value"), FREE_TEXT, ids=[n for n, *_ in FREE_TEXT])
@pytest.mark.parametrize(("template", "said"), INVISIBLE, ids=["cr", "zwsp", "bom", "nul"])
def test_an_invisible_character_in_free_text_is_a_problem_that_shows_it(
    name: str, base: dict[str, str], value: str, template: str, said: str
) -> None:
    if name == "CHECK_APP_COMMAND" and template == "{}\r":
        return  # a line end after a command's words separates words: see the test below
    [problem] = problems({**base, name: template.format(value)})
    assert problem.startswith(f"{name}: expected ")
    assert said in problem
    assert "\\r" in problem if "\r" in template else True  # shown escaped, never raw
    assert "\r" not in problem
    assert "\u200b" not in problem


PATHS = [f for f in FREE_TEXT if f[0].endswith(("_PATH", "_URL", "_ADDRESS", "_DIR"))]
PATTERNS = [f for f in FREE_TEXT if f[0].endswith(("PATTERN", "_CONTAINS", "_BODY", "_EXPECT"))]


@pytest.mark.parametrize(("name", "base", "value"), PATHS, ids=[n for n, *_ in PATHS])
def test_whitespace_around_a_path_or_url_is_a_problem(
    name: str, base: dict[str, str], value: str
) -> None:
    [trailing] = problems({**base, name: value + " "})
    assert "ends with a space (U+0020)" in trailing
    [leading] = problems({**base, name: "\t" + value})
    assert "begins with a tab (\\t, U+0009)" in leading


@pytest.mark.parametrize(("name", "base", "value"), PATTERNS, ids=[n for n, *_ in PATTERNS])
def test_a_pattern_may_begin_or_end_with_a_plain_space_but_not_a_tab(
    name: str, base: dict[str, str], value: str
) -> None:
    load({**base, name: f" {value} "})  # e.g. a banner: "^220 "
    [problem] = problems({**base, name: value + "\t"})
    assert "ends with a tab (\\t, U+0009)" in problem


def test_a_banner_pattern_and_bytes_to_send_keep_their_spaces() -> None:
    check = only_check({**TCP, "CHECK_APP_EXPECT": "^220 ", "CHECK_APP_SEND": "HELO "})
    assert check.params == TcpParams(
        host="db", port=5432, send=b"HELO ", expect=re.compile(b"^220 ")
    )


def test_the_lock_file_of_the_issue_is_refused_instead_of_passing_for_absent() -> None:
    [problem] = problems({**FILE, "CHECK_APP_PATH": "/run/app.lock\r", "CHECK_APP_STATE": "absent"})
    assert problem == (
        'CHECK_APP_PATH: expected an absolute path, got "/run/app.lock\\r": it ends with a '
        "carriage return (\\r, U+000D): remove it (a file saved with Windows line endings?)"
    )


def test_a_pattern_says_how_to_mean_an_invisible_character() -> None:
    [problem] = problems({**LOG, "CHECK_APP_PATTERN": "ready\u00a0now"})
    assert "contains a no-break space (\\xa0, U+00A0) as character 6" in problem
    assert r"write it as an escape (\r, \t, \x20, \s, \uFEFF ...) if it is meant" in problem


def test_spaces_inside_free_text_and_escaped_ones_are_fine() -> None:
    check = only_check(
        {**LOG, "CHECK_APP_PATH": "/logs/my app/catalina.out", "CHECK_APP_PATTERN": r"ready\ "}
    )
    assert check.params == LogParams(
        path=Path("/logs/my app/catalina.out"), pattern=re.compile(r"ready\ ")
    )


def test_a_command_is_split_like_a_shell_so_line_ends_around_words_are_separators() -> None:
    check = only_check({**EXEC, "CHECK_APP_COMMAND": "sh -c 'test -e /run/ready'\r\n"})
    assert check.params == ExecParams(argv=("sh", "-c", "test -e /run/ready"))


def test_words_numbers_and_choices_ignore_whitespace_around_them() -> None:
    settings = load(
        {
            **LOG,
            "CHECK_APP_KIND": "log\r",
            "GATE_PERIOD_SECONDS": "5\r",
            "GATE_MODE": "\u00a0any ",
            "GATE_CONDITION_TYPE": "example.com/ready\r\n",
        }
    )
    assert (settings.defaults.period, settings.mode) == (5.0, GateMode.ANY)
    assert settings.condition_type == "example.com/ready"


def test_a_config_file_path_with_an_invisible_character_is_a_problem(tmp_path: Path) -> None:
    file = write_config(tmp_path, "periodSeconds: 5\n")
    [problem] = problems({**LOG, "GATE_CONFIG_FILE": file + "\r"})
    assert problem.startswith(f"GATE_CONFIG_FILE ({file}\r): expected the path of a YAML file")
    assert "ends with a carriage return" in problem


# --- duplicate keys in the config file ----------------------------------------------------------


def test_a_key_set_twice_in_the_config_file_is_a_problem_at_any_depth(tmp_path: Path) -> None:
    file = write_config(
        tmp_path,
        "periodSeconds: 5\n"
        "checks:\n"
        "  APP:\n"
        "    kind: log\n"
        "    path: /logs/a.log\n"
        "    pattern: ready\n"
        "    path: /logs/b.log\n"
        "periodSeconds: 6\n",
    )
    assert problems({"GATE_CONFIG_FILE": file}) == [
        f"checks.APP.path in {file}: set twice (lines 5 and 7): keep one",
        f"periodSeconds in {file}: set twice (lines 1 and 8): keep one",
    ]


def test_a_check_id_set_twice_is_a_problem(tmp_path: Path) -> None:
    file = write_config(
        tmp_path, "checks:\n  APP: {kind: log, path: /a, pattern: x}\n  APP: {kind: tcp}\n"
    )
    assert f"checks.APP in {file}: set twice (lines 2 and 3): keep one" in problems(
        {"GATE_CONFIG_FILE": file}
    )


def test_yaml_merge_keys_may_override_without_being_duplicates(tmp_path: Path) -> None:
    file = write_config(
        tmp_path,
        "checks:\n"
        "  APP: &base {kind: log, path: /logs/a.log, pattern: ready}\n"
        "  B:\n"
        "    <<: *base\n"
        "    path: /logs/b.log\n",
    )
    settings = load({"GATE_CONFIG_FILE": file})
    assert [str(c.params.path) for c in settings.checks] == ["/logs/a.log", "/logs/b.log"]  # type: ignore[union-attr]
