"""Configuration: the environment, and an optional YAML file, into frozen ``Settings``.

This is the only module that reads the environment: ``cli.py`` passes ``os.environ`` in. Every
value is validated, and everything that is wrong is raised at once as a ``ConfigError``, one problem
per line, each naming the variable, what was expected and what was given. An empty variable counts
as not set.

Variables, with their defaults:

    GATE_CONDITION_TYPE       the Pod condition (readiness gate) the checks set by default
                              (unset: the one readiness gate the Pod declares)
    GATE_MODE                 all | any: how a gate combines its checks                   [all]
    GATE_INITIAL_DELAY_SECONDS, GATE_PERIOD_SECONDS, GATE_TIMEOUT_SECONDS,
    GATE_SUCCESS_THRESHOLD, GATE_FAILURE_THRESHOLD
                              probe timing, as in a readinessProbe               [0, 2, 1, 1, 3]
    GATE_FAST_PERIOD_SECONDS  tcp and http checks that have not found their first success
                              also probe this often (end of one probe to start of the next);
                              0 = off; must be shorter than the period     [tcp 0.1, http 0.15]
    GATE_HTTP_ADDRESS         host:port, [v6]:port or :port of the HTTP endpoints       [:9779]
    GATE_RESYNC_SECONDS       rewrite the condition this often; 0 = never                 [300]
    GATE_WRITE                true | false: write the condition at all                   [true]
    GATE_ON_SHUTDOWN          keep | false: the condition when the agent stops           [keep]
    GATE_EVENTS               true | false: record Events when the condition changes     [true]
    GATE_EVENT_DRIVEN         true | false: log and file checks probe as soon as the file
                              changes (false: only on their period, like a kubelet probe) [true]
    GATE_LOG_LEVEL            debug | info | warning | error                             [info]
    GATE_TOKEN_DIR            the service-account token's directory
                              [/var/run/secrets/kubernetes.io/serviceaccount]
    GATE_CONTAINER_NAME       the agent's own container in the Pod               [readiness-gate]
    GATE_CONFIG_FILE          a YAML file with more settings (below)
    POD_NAME, POD_NAMESPACE, POD_UID     the Pod, from the downward API
    KUBECONFIG, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT     access to the API

    CHECK_<ID>_KIND           log | tcp | file | http | exec; <ID> is letters and digits
    CHECK_<ID>_GATE           the condition this check feeds            [GATE_CONDITION_TYPE]
    CHECK_<ID>_CONTAINER      the container whose restarts reset the check; for a log check
                              without _PATH also the container whose output (stdout and
                              stderr, through the API: needs GATE_WRITE=true and get on
                              pods/log) is the log        [every container but the agent's own]
    CHECK_<ID>_PERIOD_SECONDS (and the other timing suffixes) override GATE_* for this check
    CHECK_<ID>_FAST_PERIOD_SECONDS   the same for one tcp or http check
    log:  _PATH (or _CONTAINER alone), _PATTERN, _FAIL_PATTERN, _START_PATTERN, _MAX_AGE_SECONDS,
          _FROM (start | end)
    tcp:  _ADDRESS (host:port, [v6]:port, :port, unix:/path), _SEND (\\r \\n \\t \\0 \\xHH \\\\),
          _EXPECT (a regex for the reply)
    file: _PATH, _STATE (present | absent), _CONTAINS, _MAX_AGE_SECONDS
    http: _URL, _STATUS (200 or 200-399; default 200-399), _BODY
    exec: _COMMAND (split like a shell does; no shell runs it)

Names that Kubernetes injects for Services called ``gate`` or ``check-...`` (``GATE_SERVICE_HOST``,
``CHECK_APP_PORT_80_TCP`` ...) are ignored; every other unknown ``GATE_*`` or ``CHECK_*`` name is
a problem, with the closest valid name as a suggestion.

Config file
-----------
``GATE_CONFIG_FILE`` names a YAML file for long configurations. A top-level key ``fooBar`` sets
``GATE_FOO_BAR``, and ``checks.<ID>.fooBar`` sets ``CHECK_<ID>_FOO_BAR``; numbers and booleans read
as the text a variable would hold. The environment overrides the file. ``GATE_CONFIG_FILE``,
``POD_*``, ``KUBECONFIG`` and ``KUBERNETES_*`` are not allowed in it::

    conditionType: example.com/legacy-ready     # GATE_CONDITION_TYPE
    periodSeconds: 5                            # GATE_PERIOD_SECONDS
    checks:
      APP:                                      # CHECK_APP_*
        kind: log
        path: /logs/catalina.out
        pattern: 'Server startup in \\d+ ms'
        failureThreshold: 1                     # CHECK_APP_FAILURE_THRESHOLD

A problem with a value from the file names both: ``CHECK_APP_PATTERN (checks.APP.pattern in
/etc/gate.yaml): ...``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from sidecar import _config_parse as p
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

T = TypeVar("T")

DEFAULT_TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_HTTP_PORT = 9779
DEFAULT_RESYNC = 300.0
DEFAULT_CONTAINER_NAME = "readiness-gate"
LOG_LEVELS = ("debug", "info", "warning", "error")

_TIMING_SUFFIXES = (
    "INITIAL_DELAY_SECONDS",
    "PERIOD_SECONDS",
    "TIMEOUT_SECONDS",
    "SUCCESS_THRESHOLD",
    "FAILURE_THRESHOLD",
)

_FAST_PERIOD = "FAST_PERIOD_SECONDS"
#: The kinds that probe fast while not ready, and their fast period unless one is set.
FAST_PERIODS: Mapping[CheckKind, float] = {CheckKind.TCP: 0.1, CheckKind.HTTP: 0.15}

# The suffixes of the valid GATE_<SUFFIX> and CHECK_<ID>_<SUFFIX> names.
SETTINGS = (
    "CONDITION_TYPE",
    "MODE",
    *_TIMING_SUFFIXES,
    _FAST_PERIOD,
    "HTTP_ADDRESS",
    "RESYNC_SECONDS",
    "WRITE",
    "ON_SHUTDOWN",
    "EVENTS",
    "EVENT_DRIVEN",
    "LOG_LEVEL",
    "TOKEN_DIR",
    "CONTAINER_NAME",
    "CONFIG_FILE",
)
COMMON_PARAMETERS = ("KIND", "GATE", "CONTAINER", *_TIMING_SUFFIXES)
KIND_PARAMETERS: Mapping[CheckKind, tuple[str, ...]] = {
    CheckKind.LOG: ("PATH", "PATTERN", "FAIL_PATTERN", "START_PATTERN", "MAX_AGE_SECONDS", "FROM"),
    CheckKind.TCP: ("ADDRESS", "SEND", "EXPECT", _FAST_PERIOD),
    CheckKind.FILE: ("PATH", "STATE", "CONTAINS", "MAX_AGE_SECONDS"),
    CheckKind.HTTP: ("URL", "STATUS", "BODY", _FAST_PERIOD),
    CheckKind.EXEC: ("COMMAND",),
}
PARAMETERS = tuple(dict.fromkeys(COMMON_PARAMETERS + sum(KIND_PARAMETERS.values(), ())))

_DOWNWARD_API = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_UID": "metadata.uid",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """The Pod the agent runs in, from the downward API."""

    pod_name: str
    namespace: str
    pod_uid: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiAccess:
    """Where the Kubernetes API is: in the cluster (service host and token) or a kubeconfig."""

    token_dir: Path = DEFAULT_TOKEN_DIR
    kubeconfig: Path | None = None
    service_host: str | None = None
    service_port: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    checks: tuple[CheckSpec, ...]
    identity: Identity | None = None
    condition_type: str | None = None
    mode: GateMode = GateMode.ALL
    defaults: Timing = field(default_factory=Timing)
    fast_period: float | None = None  # GATE_FAST_PERIOD_SECONDS; None: FAST_PERIODS per kind
    http_host: str | None = None
    http_port: int = DEFAULT_HTTP_PORT
    resync: float = DEFAULT_RESYNC
    write: bool = True
    on_shutdown: ShutdownPolicy = ShutdownPolicy.KEEP
    events: bool = True
    event_driven: bool = True
    log_level: str = "info"
    api: ApiAccess = ApiAccess()
    container_name: str = DEFAULT_CONTAINER_NAME
    config_file: Path | None = None
    warnings: tuple[str, ...] = ()  # advice for the startup log, e.g. POD_UID is not set

    @property
    def gates(self) -> tuple[str | None, ...]:
        """The distinct gates the checks feed; ``None`` is the Pod's one readiness gate."""
        gates = {check.gate for check in self.checks}
        return tuple(sorted(gates, key=lambda gate: (gate is not None, gate or "")))

    def describe(self) -> dict[str, object]:
        """The effective configuration as JSON-able values, without secrets."""
        identity = self.identity
        return {
            "condition_type": self.condition_type,
            "gates": list(self.gates),
            "mode": str(self.mode),
            "defaults": {
                **_describe_timing(self.defaults),
                "fast_period_seconds": self.fast_period,
            },
            "checks": [_describe_check(check) for check in self.checks],
            "http_address": _join_host_port(self.http_host, self.http_port),
            "resync_seconds": self.resync,
            "write": self.write,
            "on_shutdown": str(self.on_shutdown),
            "events": self.events,
            "event_driven": self.event_driven,
            "log_level": self.log_level,
            "container_name": self.container_name,
            "identity": None
            if identity is None
            else {
                "pod_name": identity.pod_name,
                "namespace": identity.namespace,
                "pod_uid": identity.pod_uid,
            },
            "api": {
                "token_dir": str(self.api.token_dir),
                "kubeconfig": _str_or_none(self.api.kubeconfig),
                "service_host": self.api.service_host,
                "service_port": self.api.service_port,
            },
            "config_file": _str_or_none(self.config_file),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration. ``subject`` names the variable (and file key)."""

    subject: str
    message: str

    def __str__(self) -> str:
        text = f"{self.subject}: {self.message}" if self.subject else self.message
        first, *more = text.split("\n")
        return "\n".join([first, *(f"    {line}" for line in more)])


class ConfigError(Exception):
    """Everything that is wrong with the configuration; ``str()`` gives one problem per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_settings(env: Mapping[str, str], *, require_api: bool) -> Settings:
    """Validate the configuration in ``env`` (and ``GATE_CONFIG_FILE``); raise ``ConfigError``.

    ``require_api``: the caller will talk to the Kubernetes API, so when ``GATE_WRITE`` is true the
    Pod's identity and a way to reach the API are required.
    """
    reader = _layered(env)
    settings = _settings(reader, require_api=require_api)
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def env_snippet(variable: str) -> str:
    """The container ``env`` entry that sets ``variable`` (``POD_*``) from the downward API."""
    return (
        f"env:\n- name: {variable}\n  valueFrom:\n    fieldRef:\n"
        f"      fieldPath: {_DOWNWARD_API[variable]}"
    )


class _Reader:
    """The variables to validate, where each came from, and the problems found so far."""

    def __init__(self, values: dict[str, str], keys: dict[str, str], file: str | None) -> None:
        self.values = values
        self.keys = keys  # variable name -> its key in the config file, for values from the file
        self.file = file
        self.problems: list[Problem] = []
        self.failed: set[str] = set()

    def raw(self, name: str) -> str | None:
        return self.values.get(name) or None

    def problem(self, name: str, message: str) -> None:
        key = self.keys.get(name)
        subject = f"{name} ({key} in {self.file})" if key else name
        self.problems.append(Problem(subject, message))
        self.failed.add(name)

    def unknown(self, name: str, message: str, guess: str | None) -> None:
        """Report a name that means nothing, in the spelling of where it came from."""
        key = self.keys.get(name)
        if key is not None and guess is not None:
            guess = p.file_key(guess)
        hint = f"; did you mean {guess}?" if guess else ""
        subject = f"{key} in {self.file}" if key else name
        self.problems.append(Problem(subject, message + hint))

    def is_service_link(self, name: str) -> bool:
        return name not in self.keys and p.is_service_link(name, self.values[name])

    def parse(self, name: str, parser: Callable[[str], T]) -> T | None:
        raw = self.raw(name)
        if raw is None:
            return None
        try:
            return parser(raw)
        except p.ParseError as exc:
            self.problem(name, exc.describe(raw))
            return None

    def get(self, name: str, parser: Callable[[str], T], default: T) -> T:
        value = self.parse(name, parser)
        return default if value is None else value

    def required(self, name: str, parser: Callable[[str], T], message: str) -> T | None:
        if self.raw(name) is None:
            self.problem(name, message)
            return None
        return self.parse(name, parser)


def _layered(env: Mapping[str, str]) -> _Reader:
    """The environment over the config file, if there is one."""
    file = env.get("GATE_CONFIG_FILE") or None
    if file is None:
        return _Reader(dict(env), {}, None)
    layer = p.read_config_file(file, settings=SETTINGS, parameters=PARAMETERS)
    overrides = {name: value for name, value in env.items() if value or name not in layer.values}
    keys = {name: key for name, key in layer.keys.items() if name not in overrides}
    reader = _Reader({**layer.values, **overrides}, keys, file)
    reader.problems.extend(Problem(subject, message) for subject, message in layer.problems)
    if layer.unusable:
        reader.failed.add("GATE_CONFIG_FILE")
    return reader


def _settings(r: _Reader, *, require_api: bool) -> Settings:
    condition_type = r.parse("GATE_CONDITION_TYPE", p.condition_type)
    mode = r.get("GATE_MODE", p.choice(GateMode), GateMode.ALL)
    defaults = _timing(r, ("GATE_",), Timing())
    fast_period = r.parse("GATE_" + _FAST_PERIOD, p.seconds)
    _check_fast_period(r, ("GATE_",), fast_period, defaults.period)
    address = r.get("GATE_HTTP_ADDRESS", p.listen_address, p.Address(None, DEFAULT_HTTP_PORT))
    resync = r.get("GATE_RESYNC_SECONDS", p.seconds, DEFAULT_RESYNC)
    write = r.get("GATE_WRITE", p.boolean, True)
    on_shutdown = r.get("GATE_ON_SHUTDOWN", p.choice(ShutdownPolicy), ShutdownPolicy.KEEP)
    events = r.get("GATE_EVENTS", p.boolean, True)
    event_driven = r.get("GATE_EVENT_DRIVEN", p.boolean, True)
    log_level = r.get("GATE_LOG_LEVEL", _log_level, "info")
    token_dir = r.get("GATE_TOKEN_DIR", p.absolute_path, DEFAULT_TOKEN_DIR)
    container_name = r.get("GATE_CONTAINER_NAME", p.container_name, DEFAULT_CONTAINER_NAME)
    _unknown_settings(r)
    checks = _checks(r, condition_type, defaults, fast_period, write=write)
    needs_api = require_api and write and "GATE_WRITE" not in r.failed
    identity, warnings = _identity(r, required=needs_api)
    if not write:
        warnings += _containers_unseen(checks)
    return Settings(
        identity=identity,
        condition_type=condition_type,
        mode=mode,
        defaults=defaults,
        fast_period=fast_period,
        checks=checks,
        http_host=address.host,
        http_port=address.port,
        resync=resync,
        write=write,
        on_shutdown=on_shutdown,
        events=events,
        event_driven=event_driven,
        log_level=log_level,
        api=_api(r, token_dir, required=needs_api),
        container_name=container_name,
        config_file=Path(r.file) if r.file else None,
        warnings=warnings,
    )


def _log_level(raw: str) -> str:
    level = p.token(raw).lower()
    if level not in LOG_LEVELS:
        raise p.ParseError(p.one_of(LOG_LEVELS))
    return level


def _unknown_settings(r: _Reader) -> None:
    for name in sorted(r.values):
        suffix = name.removeprefix("GATE_")
        if suffix == name or suffix in SETTINGS or r.is_service_link(name):
            continue
        candidates = [s for s in SETTINGS if name not in r.keys or s != "CONFIG_FILE"]
        guess = p.closest(suffix, candidates)
        r.unknown(name, "unknown setting", f"GATE_{guess}" if guess else None)


def _timing(r: _Reader, prefixes: tuple[str, ...], base: Timing) -> Timing:
    """``base`` with the timing variables named ``prefixes[0] + suffix`` applied."""
    own = prefixes[0]
    timing = Timing(
        initial_delay=r.get(own + "INITIAL_DELAY_SECONDS", p.seconds, base.initial_delay),
        period=r.get(own + "PERIOD_SECONDS", p.positive_seconds, base.period),
        timeout=r.get(own + "TIMEOUT_SECONDS", p.positive_seconds, base.timeout),
        success_threshold=r.get(own + "SUCCESS_THRESHOLD", p.count, base.success_threshold),
        failure_threshold=r.get(own + "FAILURE_THRESHOLD", p.count, base.failure_threshold),
    )
    _check_timeout(r, prefixes, timing)
    return timing


def _check_timeout(r: _Reader, prefixes: tuple[str, ...], timing: Timing) -> None:
    timeouts = [prefix + "TIMEOUT_SECONDS" for prefix in prefixes]
    periods = [prefix + "PERIOD_SECONDS" for prefix in prefixes]
    if timing.timeout < timing.period or r.failed.intersection(timeouts + periods):
        return
    timeout_from = next((name for name in timeouts if r.raw(name)), "default")
    period_from = next((name for name in periods if r.raw(name)), "default")
    if timeout_from == timeouts[0]:
        subject = timeout_from
    elif period_from == periods[0]:
        subject = period_from
    else:
        return  # neither is set at this level: the level the values come from reports it
    r.problem(
        subject,
        f"expected a timeout shorter than the period, got timeout {timing.timeout:g} s "
        f"({timeout_from}) and period {timing.period:g} s ({period_from})",
    )


def _checks(
    r: _Reader,
    default_gate: str | None,
    defaults: Timing,
    fast_period: float | None,
    *,
    write: bool,
) -> tuple[CheckSpec, ...]:
    groups: dict[str, set[str]] = {}
    malformed = []
    for name in sorted(r.values):
        if not name.startswith("CHECK_") or r.is_service_link(name):
            continue
        if match := p.CHECK_NAME.fullmatch(name):
            groups.setdefault(match[1], set()).add(match[2])
        else:
            malformed.append(name)
    known = [f"CHECK_{check_id}_{suffix}" for check_id in groups for suffix in PARAMETERS]
    for name in malformed:
        r.unknown(
            name,
            "not a check variable: they are CHECK_<ID>_<PARAMETER>, <ID> letters and digits",
            p.closest(name, known),
        )
    if not groups and "GATE_CONFIG_FILE" not in r.failed:
        r.problems.append(
            Problem(
                "",
                "no checks configured: set CHECK_<ID>_KIND and its parameters, "
                "e.g. CHECK_APP_KIND=log",
            )
        )
    specs = [
        _check(r, i, suffixes, default_gate, defaults, fast_period=fast_period, write=write)
        for i, suffixes in sorted(groups.items())
    ]
    checks = tuple(spec for spec in specs if spec is not None)
    if "GATE_CONDITION_TYPE" not in r.failed:
        _check_gates(r, checks)
    return checks


def _check(
    r: _Reader,
    check_id: str,
    suffixes: set[str],
    default_gate: str | None,
    defaults: Timing,
    *,
    fast_period: float | None,
    write: bool,
) -> CheckSpec | None:
    prefix = f"CHECK_{check_id}_"
    if not suffixes.intersection(PARAMETERS):
        _unknown_parameters(r, check_id, suffixes, None)
        return None
    kind = r.required(
        prefix + "KIND", p.choice(CheckKind), f"required: {p.one_of(CheckKind)}: the kind of check"
    )
    _unknown_parameters(r, check_id, suffixes, kind)
    timing = _timing(r, (prefix, "GATE_"), defaults)
    gate = r.get(prefix + "GATE", p.condition_type, default_gate)
    container = r.parse(prefix + "CONTAINER", p.container_name)
    if kind is CheckKind.LOG:
        params: CheckParams | None = _log_params(r, prefix, container, write=write)
    else:
        params = _PARAMS[kind](r, prefix) if kind is not None else None
    if kind is None:
        return None
    timing = replace(timing, fast_period=_fast_period(r, prefix, kind, timing.period, fast_period))
    if params is None:
        return None
    return CheckSpec(
        id=check_id, kind=kind, gate=gate, timing=timing, params=params, container=container
    )


def _containers_unseen(checks: tuple[CheckSpec, ...]) -> tuple[str, ...]:
    """Probe-only mode reads no Pod: CHECK_<ID>_CONTAINER cannot take effect."""
    warnings = []
    for check in checks:
        if check.container is None:
            continue
        if isinstance(check.params, LogParams) and check.params.follows_output:
            continue  # a configuration error in this mode, reported as such
        hint = (
            f"; set CHECK_{check.id}_START_PATTERN to the line the application logs when it starts"
            if check.kind is CheckKind.LOG
            else ""
        )
        warnings.append(
            f"CHECK_{check.id}_CONTAINER has no effect with GATE_WRITE=false: without API access "
            f"the agent cannot see container restarts{hint}"
        )
    return tuple(warnings)


def _fast_period(
    r: _Reader, prefix: str, kind: CheckKind, period: float, default: float | None
) -> float:
    """The check's fast period: its own, else GATE_'s, else its kind's (0: the kind has none)."""
    if kind not in FAST_PERIODS:
        return 0.0
    own = r.parse(prefix + _FAST_PERIOD, p.seconds)
    chosen = own if own is not None else default
    if chosen is None:
        builtin = FAST_PERIODS[kind]
        return builtin if builtin < period else 0.0  # a period this short is fast already
    _check_fast_period(r, (prefix, "GATE_"), chosen, period)
    return chosen


def _check_fast_period(
    r: _Reader, prefixes: tuple[str, ...], fast: float | None, period: float
) -> None:
    """An explicit fast period is 0 or shorter than the period; the level that sets it reports."""
    fasts = [prefix + _FAST_PERIOD for prefix in prefixes]
    periods = [prefix + "PERIOD_SECONDS" for prefix in prefixes]
    if not fast or fast < period or r.failed.intersection(fasts + periods):
        return
    fast_from = next(name for name in fasts if r.raw(name))
    period_from = next((name for name in periods if r.raw(name)), "default")
    if fast_from == fasts[0]:
        subject = fast_from
    elif period_from == periods[0]:
        subject = period_from
    else:
        return  # both come from GATE_*: reported there
    r.problem(
        subject,
        f"expected a fast period shorter than the period (or 0: no fast probes), got fast period "
        f"{fast:g} s ({fast_from}) and period {period:g} s ({period_from})",
    )


def _unknown_parameters(
    r: _Reader, check_id: str, suffixes: set[str], kind: CheckKind | None
) -> None:
    prefix = f"CHECK_{check_id}_"
    allowed = COMMON_PARAMETERS + (KIND_PARAMETERS[kind] if kind else PARAMETERS)
    orphans = not suffixes.intersection(PARAMETERS)  # e.g. CHECK_MY_APP_KIND alone: check MY
    for suffix in sorted(suffixes.difference(allowed)):
        name = prefix + suffix
        owners = [k for k, parameters in KIND_PARAMETERS.items() if suffix in parameters]
        head, _, tail = suffix.partition("_")
        if owners:
            r.problem(name, f"applies to {p.one_of(owners)} checks, but {prefix}KIND is {kind}")
        elif orphans and tail in PARAMETERS:
            message = f"unknown check parameter {suffix}: an <ID> is letters and digits, without _"
            r.unknown(name, message, f"CHECK_{check_id}{head}_{tail}")
        else:
            message = f"unknown parameter for a {kind} check" if kind else "unknown check parameter"
            guess = p.closest(suffix, allowed)
            if kind and not guess:
                message += f", which takes {prefix}" + ", _".join(KIND_PARAMETERS[kind])
            r.unknown(name, message, prefix + guess if guess else None)


def _check_gates(r: _Reader, checks: tuple[CheckSpec, ...]) -> None:
    """Checks without a gate are ambiguous when other checks name one."""
    named = sorted({check.gate for check in checks if check.gate is not None})
    if not named:
        return
    for check in checks:
        name = f"CHECK_{check.id}_GATE"
        if check.gate is None and name not in r.failed:
            r.problem(
                name,
                f"required because other checks name a gate ({', '.join(named)}): set it, "
                "or set GATE_CONDITION_TYPE as the gate of every check without CHECK_<ID>_GATE",
            )


def _log_params(r: _Reader, prefix: str, container: str | None, *, write: bool) -> LogParams | None:
    """Without ``_PATH`` the lines are the output of ``_CONTAINER`` (see :func:`_output_of`)."""
    path = r.parse(prefix + "PATH", p.absolute_path)
    output_of = (
        _output_of(r, prefix, container, write=write) if r.raw(prefix + "PATH") is None else None
    )
    pattern = r.required(
        prefix + "PATTERN", p.regex, "required for log checks: a regular expression for the line"
    )
    fail_pattern = r.parse(prefix + "FAIL_PATTERN", p.regex)
    start_pattern = r.parse(prefix + "START_PATTERN", p.regex)
    max_age = r.parse(prefix + "MAX_AGE_SECONDS", p.positive_seconds)
    start = r.get(prefix + "FROM", p.choice(LogStart), LogStart.START)
    if pattern is None or (path is None and output_of is None):
        return None
    return LogParams(
        path=path,
        pattern=pattern,
        fail_pattern=fail_pattern,
        start_pattern=start_pattern,
        max_age=max_age,
        start=start,
        output_of=output_of,
    )


def _output_of(r: _Reader, prefix: str, container: str | None, *, write: bool) -> str | None:
    """A log check without ``_PATH`` follows the output of ``_CONTAINER`` through the API: the
    container's name, or None (and the problem reported)."""
    if container is None:
        if prefix + "CONTAINER" not in r.failed:
            r.problem(
                prefix + "PATH",
                "required for log checks: the log file; or, without it, set "
                f"{prefix}CONTAINER to follow that container's output (stdout and stderr) "
                "through the API",
            )
        return None
    if not write:
        r.problem(
            prefix + "CONTAINER",
            f"without {prefix}PATH the check follows the output of container {container} through "
            "the Kubernetes API, which probe-only mode (GATE_WRITE=false) does not use: set "
            f"{prefix}PATH to a log file the application writes on a shared volume, or "
            "GATE_WRITE=true with a Role that grants get on pods/log (chart value "
            "rbac.podLogs=true, or examples/rbac/pod-logs-rbac.yaml)",
        )
        return None
    return container


def _tcp_params(r: _Reader, prefix: str) -> TcpParams | None:
    target = r.required(
        prefix + "ADDRESS",
        p.tcp_address,
        "required for tcp checks: host:port, [ipv6]:port, :port or unix:/absolute/path",
    )
    send = r.parse(prefix + "SEND", p.escaped_bytes)
    expect = r.parse(prefix + "EXPECT", p.bytes_regex)
    if target is None:
        return None
    return TcpParams(
        host=target.host, port=target.port, unix_path=target.unix_path, send=send, expect=expect
    )


def _file_params(r: _Reader, prefix: str) -> FileParams | None:
    path = r.required(prefix + "PATH", p.absolute_path, "required for file checks: the file")
    state = r.get(prefix + "STATE", p.choice(FileState), FileState.PRESENT)
    contains = r.parse(prefix + "CONTAINS", p.regex)
    max_age = r.parse(prefix + "MAX_AGE_SECONDS", p.positive_seconds)
    conflicts = False
    if state is FileState.ABSENT:
        for name in (prefix + "CONTAINS", prefix + "MAX_AGE_SECONDS"):
            if r.raw(name) is not None:
                r.problem(name, f"applies to a file that is present, but {prefix}STATE is absent")
                conflicts = True
    if path is None or conflicts:
        return None
    return FileParams(path=path, state=state, contains=contains, max_age=max_age)


def _http_params(r: _Reader, prefix: str) -> HttpParams | None:
    url = r.required(prefix + "URL", p.http_url, "required for http checks: the URL to get")
    low, high = r.get(prefix + "STATUS", p.status_range, (200, 399))
    body = r.parse(prefix + "BODY", p.regex)
    if url is None:
        return None
    return HttpParams(url=url, status_min=low, status_max=high, body=body)


def _exec_params(r: _Reader, prefix: str) -> ExecParams | None:
    argv = r.required(prefix + "COMMAND", p.command, "required for exec checks: the command line")
    return None if argv is None else ExecParams(argv=argv)


_PARAMS: Mapping[CheckKind, Callable[[_Reader, str], CheckParams | None]] = {
    CheckKind.TCP: _tcp_params,
    CheckKind.FILE: _file_params,
    CheckKind.HTTP: _http_params,
    CheckKind.EXEC: _exec_params,
}


def _identity(r: _Reader, *, required: bool) -> tuple[Identity | None, tuple[str, ...]]:
    name, namespace, uid = r.raw("POD_NAME"), r.raw("POD_NAMESPACE"), r.raw("POD_UID")
    warnings: tuple[str, ...] = ()
    if required:
        for variable, value in (("POD_NAME", name), ("POD_NAMESPACE", namespace)):
            if value is None:
                r.problem(
                    variable,
                    "required to write the Pod's condition (or set GATE_WRITE=false); "
                    f"add it to the container spec:\n{env_snippet(variable)}",
                )
        if uid is None:
            warnings = (
                "POD_UID is not set: the agent cannot tell its Pod from a later one with the same "
                f"name; add it to the container spec:\n{env_snippet('POD_UID')}",
            )
    if name is None or namespace is None:
        return None, warnings
    return Identity(pod_name=name, namespace=namespace, pod_uid=uid), warnings


def _api(r: _Reader, token_dir: Path, *, required: bool) -> ApiAccess:
    kubeconfig = _kubeconfig(r.raw("KUBECONFIG"))
    host, port = r.raw("KUBERNETES_SERVICE_HOST"), r.raw("KUBERNETES_SERVICE_PORT")
    if required and kubeconfig is None and host is None:
        r.problem(
            "KUBERNETES_SERVICE_HOST",
            "not set, and neither is KUBECONFIG: writing the condition needs the Kubernetes API. "
            "In a Pod, Kubernetes sets KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT itself "
            "and mounts the service account's token in GATE_TOKEN_DIR; outside a cluster, set "
            "KUBECONFIG to a kubeconfig file. With GATE_WRITE=false the agent only runs the "
            "checks and needs no API access.",
        )
    elif required and kubeconfig is None and port is None:
        r.problem(
            "KUBERNETES_SERVICE_PORT",
            "required with KUBERNETES_SERVICE_HOST: the API server's port (Kubernetes sets both)",
        )
    return ApiAccess(
        token_dir=token_dir, kubeconfig=kubeconfig, service_host=host, service_port=port
    )


def _kubeconfig(raw: str | None) -> Path | None:
    """The first file of a ``KUBECONFIG`` list that exists, or else the first."""
    paths = [Path(part) for part in (raw or "").split(":") if part]
    return next((path for path in paths if _exists(path)), paths[0] if paths else None)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _describe_timing(timing: Timing) -> dict[str, object]:
    return {
        "initial_delay_seconds": timing.initial_delay,
        "period_seconds": timing.period,
        "timeout_seconds": timing.timeout,
        "success_threshold": timing.success_threshold,
        "failure_threshold": timing.failure_threshold,
        "fast_period_seconds": timing.fast_period,
    }


def _describe_check(check: CheckSpec) -> dict[str, object]:
    return {
        "id": check.id,
        "kind": str(check.kind),
        "gate": check.gate,
        "container": check.container,
        "timing": _describe_timing(check.timing),
        **_describe_params(check.params),
    }


def _describe_params(params: CheckParams) -> dict[str, object]:
    if isinstance(params, LogParams):
        return {
            "path": _str_or_none(params.path),
            "output_of": params.output_of,
            "pattern": params.pattern.pattern,
            "fail_pattern": _pattern(params.fail_pattern),
            "start_pattern": _pattern(params.start_pattern),
            "max_age_seconds": params.max_age,
            "from": str(params.start),
        }
    if isinstance(params, TcpParams):
        return {
            "address": params.address,
            "send": None if params.send is None else p.escape_bytes(params.send),
            "expect": _pattern(params.expect),
        }
    if isinstance(params, FileParams):
        return {
            "path": str(params.path),
            "state": str(params.state),
            "contains": _pattern(params.contains),
            "max_age_seconds": params.max_age,
        }
    if isinstance(params, HttpParams):
        low, high = params.status_min, params.status_max
        return {
            "url": _redact(params.url),
            "status": str(low) if low == high else f"{low}-{high}",
            "body": _pattern(params.body),
        }
    return {"command": list(params.argv)}


def _pattern(pattern: re.Pattern[str] | re.Pattern[bytes] | None) -> str | None:
    if pattern is None:
        return None
    text = pattern.pattern
    return text if isinstance(text, str) else text.decode("utf-8", "surrogateescape")


def _redact(url: str) -> str:
    """``url`` without the password of its user information."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _join_host_port(host: str | None, port: int) -> str:
    if host is None:
        return f":{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)
