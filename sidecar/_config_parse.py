"""Private helpers of ``config.py``: parsers for single values, names, and the config file.

A parser takes the raw text of one variable and returns its value, or raises ``ParseError`` saying
what was expected; ``config.py`` adds the variable's name and the text it was given.

Invisible characters (a CRLF env file, a YAML copy-paste, a web page's no-break space):

- words, numbers, booleans, choices, addresses and condition types ignore the whitespace around
  them (``token``);
- free text — paths, regular expressions, URLs, ``SEND`` — must not contain an invisible character
  anywhere (``visible``): a control character (``\\r``, ``\\n``, ``\\t``, NUL...), a format
  character (zero-width space, byte-order mark, direction marks), a line or paragraph separator,
  or a space other than U+0020. A path or URL must not begin or end with a plain space either; a
  regular expression or ``SEND`` may (``^220 ``). The error names the character; a regular
  expression or ``SEND`` can say it on purpose with an escape;
- a command is split like a shell does: spaces, tabs and line ends separate words, other
  invisible characters are refused.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import shlex
import unicodedata
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import AnyStr, NamedTuple, TypeVar
from urllib.parse import urlsplit

import yaml

from sidecar.model import bounded

E = TypeVar("E", bound=StrEnum)

QUOTE_LIMIT = 200
CHECK_NAME = re.compile(r"CHECK_([A-Za-z0-9]+)_(.+)", re.DOTALL)
CHECK_ID = re.compile(r"[A-Za-z0-9]+")


class ParseError(ValueError):
    def __init__(self, expected: str, reason: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.reason = reason

    def describe(self, raw: str) -> str:
        text = f"expected {self.expected}, got {quote(raw)}"
        return f"{text}: {self.reason}" if self.reason else text


def quote(raw: str) -> str:
    """``raw`` in double quotes, on one line; only unprintable characters are escaped.

    Backslashes stay as they are, so a regular expression shows as it was written.
    """
    text = bounded(raw, QUOTE_LIMIT)
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + '"'


#: Whitespace (Unicode's, as ``str.isspace``) without the ASCII information separators.
_AROUND = "".join(chr(c) for c in range(0x3001) if chr(c).isspace() and not 0x1C <= c <= 0x1F)


def token(raw: str) -> str:
    """``raw`` without the whitespace around it (also line ends and no-break spaces): for words,
    numbers, addresses."""
    return raw.strip(_AROUND)


# --- invisible characters ----------------------------------------------------------------------

_CHARACTER_NAMES = {
    " ": "a space",
    "\t": "a tab",
    "\r": "a carriage return",
    "\n": "a line feed",
    "\0": "a NUL character",
    "\u00a0": "a no-break space",
    "\u200b": "a zero-width space",
    "\ufeff": "a byte-order mark",
}
_WINDOWS = " (a file saved with Windows line endings?)"


def is_invisible(char: str) -> bool:
    """A character nobody sees in a value: control, format, separator, or a non-ASCII space."""
    category = unicodedata.category(char)
    return category in ("Cc", "Cf", "Zl", "Zp") or (category == "Zs" and char != " ")


def describe_character(char: str) -> str:
    """``a carriage return (\\r, U+000D)``."""
    name = _CHARACTER_NAMES.get(char) or f"the character {unicodedata.name(char, 'unnamed')}"
    if char == " ":
        return f"{name} (U+0020)"
    return f"{name} ({repr(char)[1:-1]}, U+{ord(char):04X})"


def visible(raw: str, expected: str, escape: str | None = None, *, spaces: bool = False) -> str:
    """``raw`` if it has no invisible character (and, unless ``spaces``, no whitespace at either
    end: a plain space is visible in a pattern such as ``^220 ``, not at the end of a path).

    Else ``ParseError(expected, ...)`` naming the character and where it is; ``escape``: how the
    value can say such a character on purpose (regular expressions, ``SEND``).
    """
    for index, char in enumerate(raw):
        edge = index in (0, len(raw) - 1)
        if char == " " and spaces:
            continue
        if not is_invisible(char) and not (edge and char.isspace()):
            continue
        where = "ends with" if index == len(raw) - 1 else "begins with" if index == 0 else ""
        found = (
            f"it {where} {describe_character(char)}"
            if where
            else f"it contains {describe_character(char)} as character {index + 1}"
        )
        fix = f"write it as {escape} if it is meant" if escape else "remove it"
        hint = _WINDOWS if char == "\r" and index == len(raw) - 1 else ""
        raise ParseError(expected, f"{found}: {fix}{hint}")
    return raw


def one_of(options: Iterable[str]) -> str:
    """``a, b or c``."""
    *rest, last = options
    return f"{', '.join(rest)} or {last}" if rest else last


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be, ignoring case and punctuation."""
    by_key = {_fold(c): c for c in candidates}
    match = difflib.get_close_matches(_fold(name), list(by_key), n=1, cutoff=0.6)
    return by_key[match[0]] if match else None


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# --- numbers, words, paths ---------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WITH_UNIT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+) *(?:ms|s|m|h)", re.IGNORECASE)
_MAX_COUNT_DIGITS = 9


def _seconds(raw: str, *, positive: bool) -> float:
    expected = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    text = token(raw)
    if not _NUMBER.fullmatch(text):
        unit = _WITH_UNIT.fullmatch(text)
        raise ParseError(expected, "write a plain number, without a unit" if unit else None)
    value = float(text) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not math.isfinite(value):
        raise ParseError(expected, "too large")
    if value < 0 or (positive and value == 0):
        raise ParseError(expected)
    return value


def positive_seconds(raw: str) -> float:
    return _seconds(raw, positive=True)


def seconds(raw: str) -> float:
    return _seconds(raw, positive=False)


def count(raw: str) -> int:
    expected = "a whole number >= 1"
    text = token(raw).removeprefix("+")
    if not re.fullmatch(r"[0-9]+", text):
        raise ParseError(expected)
    if len(text.lstrip("0")) > _MAX_COUNT_DIGITS:
        raise ParseError(expected, "too large")
    if int(text) < 1:
        raise ParseError(expected)
    return int(text)


def boolean(raw: str) -> bool:
    text = token(raw).lower()
    if text not in ("true", "false"):
        raise ParseError("true or false")
    return text == "true"


def choice(options: type[E]) -> Callable[[str], E]:
    names = [str(option) for option in options]

    def parse(raw: str) -> E:
        text = token(raw).lower()
        if text not in names:
            guess = closest(text, names)
            raise ParseError(one_of(names), f"did you mean {guess}?" if guess else None)
        return options(text)

    return parse


def absolute_path(raw: str) -> Path:
    expected = "an absolute path"
    visible(raw, expected)
    if not raw.startswith("/"):
        raise ParseError(expected)
    return Path(raw)


# --- regular expressions and bytes -------------------------------------------------------------

_REGEX = "a regular expression (Python re syntax)"
_REGEX_ESCAPES = r"an escape (\r, \t, \x20, \s, \uFEFF ...)"


def regex(raw: str) -> re.Pattern[str]:
    return _compile(visible(raw, _REGEX, _REGEX_ESCAPES, spaces=True))


def bytes_regex(raw: str) -> re.Pattern[bytes]:
    """A pattern for replies: the text is encoded as UTF-8 before it is compiled."""
    return _compile(_encode(visible(raw, _REGEX, _REGEX_ESCAPES, spaces=True), _REGEX))


def _compile(pattern: AnyStr) -> re.Pattern[AnyStr]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning "possible nested set"
            compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ParseError(_REGEX, str(exc)) from None
    return compiled


def _encode(raw: str, expected: str) -> bytes:
    try:
        return raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ParseError(expected, f"not valid UTF-8 text at position {exc.start}") from None


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.?)", re.DOTALL)
_ESCAPED = {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0"}
_SHOWN = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_SEND = r"text with backslash escapes (\r \n \t \0 \xHH \\)"


def escaped_bytes(raw: str) -> bytes:
    r"""``raw`` as bytes, with the escapes ``\r \n \t \0 \xHH \\`` replaced."""
    visible(raw, _SEND, r"an escape (\r \n \t \0 \xHH)", spaces=True)
    out = bytearray()
    end = 0
    for match in _ESCAPE.finditer(raw):
        out += _encode(raw[end : match.start()], _SEND)
        out += _unescape(match)
        end = match.end()
    out += _encode(raw[end:], _SEND)
    return bytes(out)


def _unescape(match: re.Match[str]) -> bytes:
    code = match[1]
    if len(code) == len("xHH"):
        return bytes([int(code[1:], 16)])
    if code in _ESCAPED:
        return _ESCAPED[code]
    if not code:
        problem = "a lone \\ at the end (write \\\\ for a backslash)"
    elif code == "x":
        problem = f"\\x needs two hex digits at position {match.start()}"
    else:
        problem = f"unknown escape \\{code} at position {match.start()}"
    raise ParseError(_SEND, problem)


def escape_bytes(data: bytes) -> str:
    """The inverse of ``escaped_bytes``: printable ASCII as is, everything else escaped."""
    return "".join(_SHOWN.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}") for b in data)


# --- addresses, URLs, commands, condition types ------------------------------------------------

_LABEL = r"[A-Za-z0-9_](?:[-A-Za-z0-9_]*[A-Za-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_MAX_HOST = 253
_MAX_UNIX_PATH = 107  # sun_path holds 108 bytes including the terminating NUL


class Address(NamedTuple):
    host: str | None
    port: int


class TcpTarget(NamedTuple):
    host: str | None
    port: int | None
    unix_path: str | None


def listen_address(raw: str) -> Address:
    return _host_port(raw, "host:port, [ipv6]:port or :port", min_port=0)


def tcp_address(raw: str) -> TcpTarget:
    expected = "host:port, [ipv6]:port, :port or unix:/absolute/path"
    visible(token(raw), expected)  # a host and port may have spaces around them, nothing else
    if token(raw).startswith("unix:"):
        path = visible(raw, expected).removeprefix("unix:")
        if not path.startswith("/") or "\0" in path:
            raise ParseError(expected, "a unix socket needs an absolute path")
        if len(path.encode("utf-8", "surrogateescape")) > _MAX_UNIX_PATH:
            raise ParseError(expected, f"a unix socket path has at most {_MAX_UNIX_PATH} bytes")
        return TcpTarget(None, None, path)
    host, port = _host_port(raw, expected, min_port=1)
    return TcpTarget(host or "127.0.0.1", port, None)


def _host_port(raw: str, expected: str, *, min_port: int) -> Address:
    text = token(raw)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ParseError(expected, "missing ]:port after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ParseError(expected, "not an IPv6 address in the brackets") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ParseError(expected, "no :port")
        if ":" in host:
            raise ParseError(expected, "write an IPv6 address in brackets, e.g. [::1]:8080")
        if host and (len(host) > _MAX_HOST or not _HOST.fullmatch(host)):
            raise ParseError(expected, "the host is not a host name or an IP address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not min_port <= int(port) <= 65535:
        raise ParseError(expected, f"the port must be a number from {min_port} to 65535")
    return Address(host or None, int(port))


def http_url(raw: str) -> str:
    expected = "an http:// or https:// URL with a host"
    visible(raw, expected)
    if not raw or any(c.isspace() for c in raw):
        raise ParseError(expected, "a URL has no spaces" if token(raw) else None)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise ParseError(expected, str(exc)) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ParseError(expected)
    return raw


def status_range(raw: str) -> tuple[int, int]:
    expected = "an HTTP status code or range within 100-599, e.g. 200 or 200-399"
    match = re.fullmatch(r"([0-9]{3})(?: *- *([0-9]{3}))?", token(raw))
    if not match:
        raise ParseError(expected)
    low = int(match[1])
    high = int(match[2] or low)
    if not 100 <= low <= 599 or not 100 <= high <= 599:
        raise ParseError(expected)
    if low > high:
        raise ParseError(expected, "the range is empty: the first code is larger")
    return low, high


def command(raw: str) -> tuple[str, ...]:
    expected = "a command line (split like a POSIX shell does, but no shell runs it)"
    visible(raw.strip(" \t\r\n"), expected)  # whitespace around words is a separator
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ParseError(expected, str(exc).lower()) from None
    if not argv:
        raise ParseError(expected, "there is no command")
    return argv


# Pod condition types that the kubelet or a controller sets: the agent must never write them.
BUILTIN_CONDITIONS = frozenset(
    {
        "Ready",
        "ContainersReady",
        "PodScheduled",
        "Initialized",
        "PodReadyToStartContainers",
        "DisruptionTarget",
        "PodResizePending",
        "PodResizeInProgress",
    }
)
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_MAX_PREFIX = 253
_MAX_NAME = 63


def condition_type(raw: str) -> str:
    """A Kubernetes qualified name that Kubernetes itself does not own."""
    expected = "a condition type such as example.com/app-ready"
    text = token(raw)
    parts = text.split("/")
    if len(parts) > 2:
        raise ParseError(expected, "at most one /")
    *prefix, name = parts
    if prefix and (len(prefix[0]) > _MAX_PREFIX or not _DNS_SUBDOMAIN.fullmatch(prefix[0])):
        raise ParseError(
            expected,
            "the part before / must be a DNS subdomain: lower-case letters, digits, - and ., "
            f"at most {_MAX_PREFIX} characters",
        )
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise ParseError(
            expected,
            f"the name{' after /' if prefix else ''} must be 1-{_MAX_NAME} letters, digits, -, _ "
            "or ., beginning and ending with a letter or digit",
        )
    if text in BUILTIN_CONDITIONS:
        raise ParseError(
            "a condition type of your own, such as example.com/app-ready",
            f"Kubernetes sets {text} itself; the agent never writes it",
        )
    return text


_CONTAINER_NAME = re.compile(_DNS_LABEL)
_MAX_LABEL = 63


def container_name(raw: str) -> str:
    """A container name: a DNS label (RFC 1123), as Kubernetes requires."""
    text = token(raw)
    if len(text) > _MAX_LABEL or not _CONTAINER_NAME.fullmatch(text):
        raise ParseError(
            "a container name: lower-case letters, digits and -, beginning and ending with a "
            f"letter or digit, at most {_MAX_LABEL} characters"
        )
    return text


# --- names ---------------------------------------------------------------------------------------

_SERVICE = r"(?:GATE|CHECK)(?:_[A-Z0-9_]*[A-Z0-9])?"  # a Service's name, upper case, - as _
_SERVICE_LINK = re.compile(
    rf"{_SERVICE}_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)"
)
_SERVICE_PORT = re.compile(rf"{_SERVICE}_PORT")
_SERVICE_URL = re.compile(r"(?:tcp|udp|sctp)://\S+")


def is_service_link(name: str, value: str) -> bool:
    """Whether Kubernetes injected ``name`` for a Service (``enableServiceLinks``).

    A Service named ``gate`` or ``check-app`` gives ``GATE_SERVICE_HOST``, ``CHECK_APP_PORT`` and
    so on. The bare ``<SERVICE>_PORT`` is recognised by its value too (``tcp://10.0.0.1:80``), so
    that a mistaken ``CHECK_APP_PORT=8080`` is still reported.
    """
    if _SERVICE_LINK.fullmatch(name):
        return True
    return bool(_SERVICE_PORT.fullmatch(name) and _SERVICE_URL.fullmatch(value))


def camel(suffix: str) -> str:
    """``FAIL_PATTERN`` -> ``failPattern``: how the config file spells a variable's suffix."""
    first, *rest = suffix.lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def snake(key: str) -> str | None:
    """``failPattern`` -> ``FAIL_PATTERN``, or ``None`` when ``key`` is not spelt like ``camel``."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()
    if not re.fullmatch(r"[A-Z0-9]+(?:_[A-Z0-9]+)*", name) or camel(name) != key:
        return None
    return name


def file_key(name: str) -> str | None:
    """Where the config file sets ``name``: ``CHECK_APP_PATTERN`` -> ``checks.APP.pattern``."""
    if name.startswith("GATE_"):
        return camel(name.removeprefix("GATE_"))
    match = CHECK_NAME.fullmatch(name)
    return f"checks.{match[1]}.{camel(match[2])}" if match else None


# --- the config file -----------------------------------------------------------------------------

FORBIDDEN_IN_FILE = {
    "configFile": "GATE_CONFIG_FILE",
    "podName": "POD_NAME",
    "podNamespace": "POD_NAMESPACE",
    "podUid": "POD_UID",
    "kubeconfig": "KUBECONFIG",
    "kubernetesServiceHost": "KUBERNETES_SERVICE_HOST",
    "kubernetesServicePort": "KUBERNETES_SERVICE_PORT",
}


@dataclass
class FileLayer:
    """A config file flattened to variables, with the key each came from and what was wrong."""

    unusable: bool = False  # the file could not be read as a mapping
    values: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (subject, message)


def read_config_file(
    path: str, *, settings: Collection[str], parameters: Collection[str]
) -> FileLayer:
    """Flatten the YAML file at ``path``.

    ``settings`` and ``parameters`` are the valid suffixes of ``GATE_*`` and ``CHECK_<ID>_*`` names.
    """
    reader = _FileReader(path, settings, parameters)
    document = reader.load()
    if document is not None:
        reader.top(document)
    return reader.layer


class _FileReader:
    def __init__(self, path: str, settings: Collection[str], parameters: Collection[str]) -> None:
        self.path = path
        self.settings = [
            camel(s) for s in settings if f"GATE_{s}" not in FORBIDDEN_IN_FILE.values()
        ]
        self.parameters = [camel(p) for p in parameters]
        self.layer = FileLayer()

    def problem(self, key: str | None, message: str) -> None:
        subject = f"GATE_CONFIG_FILE ({self.path})" if key is None else f"{key} in {self.path}"
        self.layer.problems.append((subject, message))

    def load(self) -> dict[object, object] | None:
        try:
            visible(self.path, "the path of a YAML file")
            document, duplicates = _load_yaml(Path(self.path))
        except ParseError as exc:
            self.problem(None, exc.describe(self.path))
            self.layer.unusable = True
            return None
        except _UnusableFileError as exc:
            self.problem(None, str(exc))
            self.layer.unusable = True
            return None
        for duplicate in duplicates:
            self.problem(duplicate.key, f"set twice ({duplicate.lines}): keep one")
        if document is None:
            return {}
        if not isinstance(document, dict):
            self.problem(None, f"expected a mapping of settings, got {_kind(document)}")
            self.layer.unusable = True
            return None
        return document

    def top(self, document: dict[object, object]) -> None:
        for key, value in document.items():
            if not isinstance(key, str):
                self.problem(str(key), "expected a setting's name as the key")
            elif key == "checks":
                self.checks(value)
            elif (variable := _forbidden(key)) is not None:
                self.problem(key, f"not allowed in the file: set {variable} in the environment")
            else:
                self.entry(key, key, "GATE_", [*self.settings, "checks"], value)

    def checks(self, checks: object) -> None:
        if not isinstance(checks, dict):
            self.problem("checks", f"expected a mapping of check IDs, got {_kind(checks)}")
            return
        for check_id, body in checks.items():
            where = f"checks.{check_id}"
            if not isinstance(check_id, str) or not CHECK_ID.fullmatch(check_id):
                self.problem(where, "a check ID is text of letters and digits, e.g. APP or '2'")
            elif not isinstance(body, dict) or not body:
                self.problem(where, "expected a mapping of the check's settings, e.g. kind: log")
            else:
                for key, value in body.items():
                    key_path = f"{where}.{key}"
                    self.entry(key_path, key, f"CHECK_{check_id}_", self.parameters, value)

    def entry(
        self, key_path: str, key: object, prefix: str, known: list[str], value: object
    ) -> None:
        suffix = snake(key) if isinstance(key, str) else None
        text = _scalar(value)
        if suffix is None or (text is None and key not in known):
            guess = closest(str(key), known)
            hint = f"did you mean {guess}?" if guess else f"keys are camelCase: {', '.join(known)}"
            noun = "setting" if prefix == "GATE_" else "check parameter"
            self.problem(key_path, f"unknown {noun}; {hint}")
        elif text is None:
            self.problem(key_path, f"expected a string, number or boolean, got {_kind(value)}")
        else:
            self.layer.values[prefix + suffix] = text
            self.layer.keys[prefix + suffix] = key_path


class _UnusableFileError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A key written twice in one mapping of the config file: its path and where."""

    key: str
    lines: str  # "lines 3 and 7"


def _load_yaml(path: Path) -> tuple[object, list[Duplicate]]:
    try:
        text = path.read_text(encoding="utf-8")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            # before constructing: that merges ``<<`` keys into the mapping nodes
            duplicates = [] if node is None else _duplicates(node)
            document = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except OSError as exc:
        raise _UnusableFileError(f"cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _UnusableFileError("cannot read the config file: it is not UTF-8 text") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise _UnusableFileError(f"cannot read the config file: {exc}") from None
    except RecursionError:
        raise _UnusableFileError("invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        raise _UnusableFileError(f"invalid YAML: {_yaml_error(exc)}") from None
    except yaml.YAMLError as exc:
        raise _UnusableFileError(f"invalid YAML: {exc}") from None
    return document, duplicates


def _duplicates(node: yaml.Node, where: str = "") -> list[Duplicate]:
    """Keys written twice in a mapping (YAML would silently keep the last), at any depth."""
    found: list[Duplicate] = []
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicates(item, f"{where}[{index}]")
    if not isinstance(node, yaml.MappingNode):
        return found
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
            continue
        key = str(key_node.value)
        path = f"{where}.{key}" if where else key
        line = key_node.start_mark.line + 1
        if key in first_line:
            found.append(Duplicate(path, f"lines {first_line[key]} and {line}"))
        else:
            first_line[key] = line
        found += _duplicates(value_node, path)
    return found


def _forbidden(key: str) -> str | None:
    """The variable that ``key`` would set if it were allowed in the file."""
    folded = _fold(key)
    exact = (v for k, v in FORBIDDEN_IN_FILE.items() if folded in (_fold(k), _fold(v)))
    prefixed = (
        f"{prefix.upper()}_*" for prefix in ("pod", "kubernetes") if folded.startswith(prefix)
    )
    return next(exact, None) or next(prefixed, None)


def _scalar(value: object) -> str | None:
    """The text an environment variable would hold for ``value``; ``None`` if there is none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r})"


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = f" ({exc.context})" if exc.context else ""
    return f"{where}{exc.problem}{context}"
