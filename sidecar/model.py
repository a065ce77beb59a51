"""Values shared by every layer: check specifications, timings and results.

Nothing here does I/O. Every other module may import this one; it imports no other module of the
package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class CheckKind(StrEnum):
    LOG = "log"
    TCP = "tcp"
    FILE = "file"
    HTTP = "http"
    EXEC = "exec"


class GateMode(StrEnum):
    ALL = "all"
    ANY = "any"


class ShutdownPolicy(StrEnum):
    KEEP = "keep"
    FALSE = "false"


class LogStart(StrEnum):
    START = "start"
    END = "end"


class FileState(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """Kubelet probe timing: the same names and meanings as a Pod's readinessProbe.

    ``fast_period`` is the agent's own: while a check looks for its first success (it is not ready
    and its last counted result is a failure), it also probes this often in between its periodic
    probes, measured from the end of one probe to the start of the next. 0 turns it off.
    """

    initial_delay: float = 0.0
    period: float = 2.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    fast_period: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LogParams:
    """A log check's parameters. Its lines come from the file ``path`` or, without one, from the
    output (stdout and stderr) of the container ``output_of``, read through the API."""

    path: Path | None
    pattern: re.Pattern[str]
    fail_pattern: re.Pattern[str] | None = None
    #: A line the application writes when it (re)starts: evidence before the latest one is
    #: forgotten.
    start_pattern: re.Pattern[str] | None = None
    max_age: float | None = None
    start: LogStart = LogStart.START
    output_of: str | None = None

    @property
    def follows_output(self) -> bool:
        """Whether the lines are a container's output (through the API), not a file."""
        return self.path is None and self.output_of is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpParams:
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None
    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None

    @property
    def address(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileParams:
    path: Path
    state: FileState = FileState.PRESENT
    contains: re.Pattern[str] | None = None
    max_age: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpParams:
    url: str
    status_min: int = 200
    status_max: int = 399
    body: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecParams:
    argv: tuple[str, ...]


CheckParams = LogParams | TcpParams | FileParams | HttpParams | ExecParams


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSpec:
    """One configured check: ``CHECK_<ID>_*``."""

    id: str
    kind: CheckKind
    gate: str | None
    timing: Timing
    params: CheckParams
    # The container whose instances the check's evidence belongs to (CHECK_<ID>_CONTAINER); None:
    # every application container of the Pod (all but the agent's own).
    container: str | None = None

    @property
    def label(self) -> str:
        """How messages name the check, e.g. ``log APP``."""
        return f"{self.kind} {self.id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The outcome of one probe. ``detail`` says why, in a few words, without the check's label.

    ``inconclusive``: the check is working but could not decide yet (e.g. a log check still reading
    a big backlog); ``ok`` is then False. The prober does not count such a result toward the
    thresholds and keeps the check's state (so a gate that is True stays True meanwhile).
    """

    ok: bool
    detail: str
    at: float
    duration: float = 0.0
    inconclusive: bool = False

    def same_evidence(self, other: CheckResult | None) -> bool:
        return other is not None and (self.ok, self.detail, self.inconclusive) == (
            other.ok,
            other.detail,
            other.inconclusive,
        )


def bounded(text: str, limit: int) -> str:
    """Shorten ``text`` to at most ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"
