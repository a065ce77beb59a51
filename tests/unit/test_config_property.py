"""Properties of the configuration loader over generated environments and files."""

from __future__ import annotations

import re
import shlex
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import FAST_PERIODS, ConfigError, Settings, load_settings
from sidecar.model import (
    CheckKind,
    CheckParams,
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

Fragment = tuple[dict[str, str], CheckParams]


@dataclass(frozen=True)
class Generated:
    env: dict[str, str]
    expected: Settings


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.upper(), word.capitalize()])


# Visible characters and the plain space (other spaces are refused as invisible look-alikes).
printable = st.characters(categories=("L", "N", "P", "S"), include_characters=" ")
literal_regexes = st.text(printable, min_size=1, max_size=20).map(re.escape)
paths = st.from_regex(r"/[A-Za-z0-9._-]{1,12}(/[A-Za-z0-9._-]{1,12}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)
gate_names = st.from_regex(
    r"[a-z][a-z0-9]{0,8}\.(io|com)/[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True
)
# Big enough to matter, small enough that repr() shows plain decimals or exponents alike.
periods = st.floats(min_value=0.01, max_value=1e5)
fractions = st.floats(min_value=0.01, max_value=0.99)
seconds = st.floats(min_value=0, max_value=1e5)
counts = st.integers(1, 10**6)


def hex_escaped(data: bytes) -> str:
    return "".join(f"\\x{byte:02x}" for byte in data)


@st.composite
def log_params(draw: st.DrawFn) -> Fragment:
    path, pattern = draw(paths), draw(literal_regexes)
    env = {"PATH": path, "PATTERN": pattern}
    fail = draw(st.none() | literal_regexes)
    max_age = draw(st.none() | periods)
    start = draw(st.sampled_from(LogStart))
    if fail is not None:
        env["FAIL_PATTERN"] = fail
    if max_age is not None:
        env["MAX_AGE_SECONDS"] = repr(max_age)
    env["FROM"] = draw(any_case(str(start)))
    params = LogParams(
        path=Path(path),
        pattern=re.compile(pattern),
        fail_pattern=None if fail is None else re.compile(fail),
        max_age=max_age,
        start=start,
    )
    return env, params


@st.composite
def tcp_params(draw: st.DrawFn) -> Fragment:
    form = draw(st.sampled_from(["name", "ipv4", "ipv6", "local", "unix"]))
    port = draw(ports)
    target: dict[str, object]
    if form == "unix":
        path = draw(paths)
        address, target = f"unix:{path}", {"unix_path": path}
    elif form == "local":
        address, target = f":{port}", {"host": "127.0.0.1", "port": port}
    else:
        host = {"name": "db.example", "ipv4": "10.1.2.3", "ipv6": "fd00::7"}[form]
        shown = f"[{host}]" if form == "ipv6" else host
        address, target = f"{shown}:{port}", {"host": host, "port": port}
    env = {"ADDRESS": address}
    send = draw(st.none() | st.binary(min_size=1, max_size=16))
    expect = draw(st.none() | literal_regexes)
    if send is not None:
        env["SEND"] = hex_escaped(send)
    if expect is not None:
        env["EXPECT"] = expect
    params = TcpParams(
        host=cast(str | None, target.get("host")),
        port=cast(int | None, target.get("port")),
        unix_path=cast(str | None, target.get("unix_path")),
        send=send,
        expect=None if expect is None else re.compile(expect.encode()),
    )
    return env, params


@st.composite
def file_params(draw: st.DrawFn) -> Fragment:
    path = draw(paths)
    state = draw(st.sampled_from(FileState))
    env = {"PATH": path, "STATE": draw(any_case(str(state)))}
    contains = max_age = None
    if state is FileState.PRESENT:
        contains = draw(st.none() | literal_regexes)
        max_age = draw(st.none() | periods)
    if contains is not None:
        env["CONTAINS"] = contains
    if max_age is not None:
        env["MAX_AGE_SECONDS"] = repr(max_age)
    params = FileParams(
        path=Path(path),
        state=state,
        contains=None if contains is None else re.compile(contains),
        max_age=max_age,
    )
    return env, params


@st.composite
def http_params(draw: st.DrawFn) -> Fragment:
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    url = f"{scheme}://{draw(st.sampled_from(['app', '10.0.0.1', '[::1]']))}:{draw(ports)}/h"
    low, high = sorted(draw(st.lists(st.integers(100, 599), min_size=2, max_size=2)))
    status = draw(st.sampled_from(["default", "single", "range"]))
    env = {"URL": url}
    if status == "default":
        low, high = 200, 399
    elif status == "single":
        env["STATUS"], high = str(low), low
    else:
        env["STATUS"] = f"{low}-{high}"
    body = draw(st.none() | literal_regexes)
    if body is not None:
        env["BODY"] = body
    params = HttpParams(
        url=url,
        status_min=low,
        status_max=high,
        body=None if body is None else re.compile(body),
    )
    return env, params


@st.composite
def exec_params(draw: st.DrawFn) -> Fragment:
    argv = draw(st.lists(st.text(printable, min_size=1, max_size=10), min_size=1, max_size=4))
    return {"COMMAND": shlex.join(argv)}, ExecParams(argv=tuple(argv))


PARAMS = {
    CheckKind.LOG: log_params(),
    CheckKind.TCP: tcp_params(),
    CheckKind.FILE: file_params(),
    CheckKind.HTTP: http_params(),
    CheckKind.EXEC: exec_params(),
}


@st.composite
def timings(draw: st.DrawFn, prefix: str, base: Timing) -> tuple[dict[str, str], Timing]:
    """Some timing variables, always with a timeout shorter than the period."""
    env: dict[str, str] = {}
    period, timeout = base.period, base.timeout
    if draw(st.booleans()):
        period = draw(periods)
        timeout = period * draw(fractions)
        env |= {"PERIOD_SECONDS": repr(period), "TIMEOUT_SECONDS": repr(timeout)}
    delay = draw(st.none() | seconds)
    success = draw(st.none() | counts)
    failure = draw(st.none() | counts)
    if delay is not None:
        env["INITIAL_DELAY_SECONDS"] = repr(delay)
    if success is not None:
        env["SUCCESS_THRESHOLD"] = str(success)
    if failure is not None:
        env["FAILURE_THRESHOLD"] = str(failure)
    timing = Timing(
        initial_delay=base.initial_delay if delay is None else delay,
        period=period,
        timeout=timeout,
        success_threshold=base.success_threshold if success is None else success,
        failure_threshold=base.failure_threshold if failure is None else failure,
    )
    return {prefix + suffix: text for suffix, text in env.items()}, timing


def fast_periods(period: float) -> st.SearchStrategy[float | None]:
    """A valid fast period for ``period`` (0 is off), or None for unset."""
    return st.none() | st.just(0.0) | fractions.map(lambda fraction: period * fraction)


def resolved_fast_period(
    kind: CheckKind, own: float | None, default: float | None, period: float
) -> float:
    """What the loader makes of the fast period variables (see FAST_PERIODS)."""
    if kind not in FAST_PERIODS:
        return 0.0
    chosen = own if own is not None else default
    if chosen is not None:
        return chosen
    return FAST_PERIODS[kind] if FAST_PERIODS[kind] < period else 0.0


@st.composite
def configurations(draw: st.DrawFn) -> Generated:
    env, defaults = draw(timings("GATE_", Timing()))
    gate_fast = draw(fast_periods(defaults.period))
    if gate_fast is not None:
        env["GATE_FAST_PERIOD_SECONDS"] = repr(gate_fast)
    gating = draw(st.sampled_from(["default gate", "own gates", "the pod's gate"]))
    condition_type = draw(gate_names) if gating == "default gate" else None
    if condition_type is not None:
        env["GATE_CONDITION_TYPE"] = condition_type
    checks = []
    for check_id in draw(
        st.lists(
            st.from_regex(r"[A-Z][A-Z0-9]{0,4}", fullmatch=True),
            min_size=1,
            max_size=4,
            unique=True,
        )
    ):
        prefix = f"CHECK_{check_id}_"
        kind = draw(st.sampled_from(CheckKind))
        fragment, params = draw(PARAMS[kind])
        check_env, timing = draw(timings(prefix, defaults))
        own_fast = draw(fast_periods(timing.period)) if kind in FAST_PERIODS else None
        if own_fast is None and gate_fast and gate_fast >= timing.period and kind in FAST_PERIODS:
            own_fast = timing.period / 2  # the inherited one would be too long for this period
        if own_fast is not None:
            check_env[prefix + "FAST_PERIOD_SECONDS"] = repr(own_fast)
        fast = resolved_fast_period(kind, own_fast, gate_fast, timing.period)
        timing = replace(timing, fast_period=fast)
        gate = {
            "default gate": draw(st.none() | gate_names),
            "own gates": draw(gate_names),
            "the pod's gate": None,
        }[gating]
        env |= {prefix + "KIND": draw(any_case(str(kind))), **check_env}
        env |= {prefix + suffix: text for suffix, text in fragment.items()}
        if gate is not None:
            env[prefix + "GATE"] = gate
        spec = CheckSpec(
            id=check_id, kind=kind, gate=gate or condition_type, timing=timing, params=params
        )
        checks.append(spec)
    mode = draw(st.sampled_from(GateMode))
    write, events = draw(st.booleans()), draw(st.booleans())
    on_shutdown = draw(st.sampled_from(ShutdownPolicy))
    log_level = draw(st.sampled_from(["debug", "info", "warning", "error"]))
    host = draw(st.sampled_from([None, "127.0.0.1", "::1", "localhost"]))
    port = draw(st.integers(0, 65535))
    resync = draw(seconds)
    shown_host = "" if host is None else f"[{host}]" if ":" in host else host
    env |= {
        "GATE_MODE": draw(any_case(str(mode))),
        "GATE_WRITE": draw(any_case(str(write).lower())),
        "GATE_EVENTS": draw(any_case(str(events).lower())),
        "GATE_ON_SHUTDOWN": draw(any_case(str(on_shutdown))),
        "GATE_LOG_LEVEL": draw(any_case(log_level)),
        "GATE_HTTP_ADDRESS": f"{shown_host}:{port}",
        "GATE_RESYNC_SECONDS": repr(resync),
    }
    expected = Settings(
        checks=tuple(sorted(checks, key=lambda check: check.id)),
        condition_type=condition_type,
        mode=mode,
        defaults=defaults,
        fast_period=gate_fast,
        http_host=host,
        http_port=port,
        resync=resync,
        write=write,
        on_shutdown=on_shutdown,
        events=events,
        log_level=log_level,
    )
    return Generated(env, expected)


@given(configurations())
def test_any_valid_configuration_loads_into_exactly_the_values_it_names(config: Generated) -> None:
    assert load_settings(config.env, require_api=False) == config.expected


def camel(suffix: str) -> str:
    first, *rest = suffix.lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def as_document(env: dict[str, str]) -> dict[str, object]:
    document: dict[str, object] = {}
    checks: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if name.startswith("GATE_"):
            document[camel(name.removeprefix("GATE_"))] = value
        else:
            check_id, _, suffix = name.removeprefix("CHECK_").partition("_")
            checks.setdefault(check_id, {})[camel(suffix)] = value
    return {**document, "checks": checks}


@given(configurations())
def test_the_same_configuration_from_a_file_loads_the_same_settings(config: Generated) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gate.yaml"
        path.write_text(yaml.safe_dump(as_document(config.env)), encoding="utf-8")

        loaded = load_settings({"GATE_CONFIG_FILE": str(path)}, require_api=False)

    assert loaded == replace(config.expected, config_file=path)


def attempt(env: dict[str, str], *, require_api: bool = False) -> Settings | ConfigError:
    try:
        return load_settings(env, require_api=require_api)
    except ConfigError as error:
        return error


NUMERIC = [
    "GATE_INITIAL_DELAY_SECONDS",
    "GATE_PERIOD_SECONDS",
    "GATE_TIMEOUT_SECONDS",
    "GATE_SUCCESS_THRESHOLD",
    "GATE_FAILURE_THRESHOLD",
    "GATE_RESYNC_SECONDS",
    "CHECK_APP_PERIOD_SECONDS",
    "CHECK_APP_TIMEOUT_SECONDS",
    "CHECK_APP_FAILURE_THRESHOLD",
    "CHECK_APP_MAX_AGE_SECONDS",
]
numberish = st.one_of(
    st.text(),
    st.from_regex(r"\s*[-+]?[0-9.eE_]{1,12}\s*(s|ms)?", fullmatch=True),
    st.floats().map(repr),
    st.integers().map(str),
)


@given(name=st.sampled_from(NUMERIC), value=numberish)
def test_junk_in_a_numeric_variable_is_either_a_number_or_a_problem_naming_it(
    name: str, value: str
) -> None:
    outcome = attempt({**LOG, name: value})

    if isinstance(outcome, ConfigError):
        assert outcome.problems
        assert all(str(problem).startswith(f"{name}: expected") for problem in outcome.problems)
    else:
        assert value.strip() == "" or float(value) >= 0
        assert outcome.checks


ALL_NAMES = [f"GATE_{s}" for s in ("CONDITION_TYPE", "MODE", "HTTP_ADDRESS", "WRITE", "EVENTS")]
ALL_NAMES += [f"GATE_{s}" for s in ("ON_SHUTDOWN", "LOG_LEVEL", "TOKEN_DIR", "CONFIG_FILE")]
ALL_NAMES += [
    f"CHECK_APP_{s}"
    for s in (
        "KIND",
        "GATE",
        "PATH",
        "PATTERN",
        "FAIL_PATTERN",
        "FROM",
        "ADDRESS",
        "SEND",
        "EXPECT",
        "STATE",
        "CONTAINS",
        "URL",
        "STATUS",
        "BODY",
        "COMMAND",
    )
]


@given(
    updates=st.dictionaries(
        st.sampled_from(ALL_NAMES)
        | st.from_regex(r"(GATE|CHECK)_[A-Za-z0-9_]{0,16}", fullmatch=True),
        st.text(max_size=40),
        max_size=4,
    ),
    require_api=st.booleans(),
)
def test_arbitrary_variables_never_raise_anything_but_config_error(
    updates: dict[str, str], require_api: bool
) -> None:
    outcome = attempt({**LOG, **updates}, require_api=require_api)

    if isinstance(outcome, ConfigError):
        assert outcome.problems
        assert all(str(problem).strip() for problem in outcome.problems)
    else:
        assert outcome.describe()


service_names = st.from_regex(r"(gate|check)(-[a-z0-9]{1,6}){0,3}", fullmatch=True)
service_ports = st.lists(
    st.tuples(
        st.none() | st.from_regex(r"[a-z]([a-z0-9]|-(?=[a-z0-9])){0,10}", fullmatch=True),
        st.integers(1, 65535),
        st.sampled_from(["TCP", "UDP", "SCTP"]),
    ),
    min_size=1,
    max_size=3,
)


def service_links(service: str, ports: list[tuple[str | None, int, str]]) -> dict[str, str]:
    """The variables the kubelet gives a container for a Service (pkg/kubelet/envvars)."""
    prefix = service.upper().replace("-", "_")
    ip = "10.96.3.4"
    _, first_port, first_protocol = ports[0]
    env = {
        f"{prefix}_SERVICE_HOST": ip,
        f"{prefix}_SERVICE_PORT": str(first_port),
        f"{prefix}_PORT": f"{first_protocol.lower()}://{ip}:{first_port}",
    }
    for name, port, protocol in ports:
        if name is not None:
            env[f"{prefix}_SERVICE_PORT_{name.upper().replace('-', '_')}"] = str(port)
        link = f"{prefix}_PORT_{port}_{protocol}"
        env |= {
            link: f"{protocol.lower()}://{ip}:{port}",
            f"{link}_PROTO": protocol.lower(),
            f"{link}_PORT": str(port),
            f"{link}_ADDR": ip,
        }
    return env


@given(service=service_names, ports=service_ports)
def test_service_link_variables_of_any_service_are_ignored(
    service: str, ports: list[tuple[str | None, int, str]]
) -> None:
    env = {**LOG, **service_links(service, ports)}

    assert load_settings(env, require_api=False) == load_settings(LOG, require_api=False)


@given(st.binary(min_size=1, max_size=64))
def test_describe_shows_sent_bytes_in_escapes_that_load_back_to_the_same_bytes(
    data: bytes,
) -> None:
    spec = CheckSpec(
        id="APP",
        kind=CheckKind.TCP,
        gate=None,
        timing=Timing(fast_period=FAST_PERIODS[CheckKind.TCP]),
        params=TcpParams(host="db", port=1, send=data),
    )
    [described] = cast(list[dict[str, str]], Settings(checks=(spec,)).describe()["checks"])
    env = {
        "CHECK_APP_KIND": "tcp",
        "CHECK_APP_ADDRESS": "db:1",
        "CHECK_APP_SEND": described["send"],
    }

    assert load_settings(env, require_api=False).checks == (spec,)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=12,
)
yaml_documents = st.one_of(
    yaml_values,
    st.dictionaries(
        st.sampled_from(["checks", "mode", "periodSeconds", "conditionType", "podName"])
        | st.text(max_size=12),
        yaml_values | st.dictionaries(st.sampled_from(["APP", "a-b", "DB2"]), yaml_values),
        max_size=4,
    ),
)


@given(document=yaml_documents, raw=st.none() | st.binary(max_size=64))
def test_any_config_file_content_is_either_settings_or_config_error(
    document: object, raw: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gate.yaml"
        if raw is None:
            path.write_text(yaml.safe_dump(document), encoding="utf-8")
        else:
            path.write_bytes(raw)

        outcome = attempt({**LOG, "GATE_CONFIG_FILE": str(path)})

    if isinstance(outcome, ConfigError):
        assert all(str(problem).strip() for problem in outcome.problems)
    else:
        assert outcome.config_file == path
