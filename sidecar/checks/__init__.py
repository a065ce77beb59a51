"""One module per check kind; ``build_check`` picks the right one for a spec."""

from __future__ import annotations

from sidecar.checks._container_lines import (
    ContainerLogs,
    LogLine,
    LogRefusal,
    LogStream,
    LogStreamError,
    RefusalKind,
)
from sidecar.checks.base import Check
from sidecar.checks.exec_ import ExecCheck
from sidecar.checks.file import FileCheck
from sidecar.checks.http import HttpCheck
from sidecar.checks.log import LogCheck
from sidecar.checks.tcp import TcpCheck
from sidecar.clock import Clock
from sidecar.model import CheckKind, CheckSpec

_KINDS: dict[CheckKind, type[Check]] = {
    CheckKind.LOG: LogCheck,
    CheckKind.TCP: TcpCheck,
    CheckKind.FILE: FileCheck,
    CheckKind.HTTP: HttpCheck,
    CheckKind.EXEC: ExecCheck,
}


def build_check(
    spec: CheckSpec,
    clock: Clock,
    *,
    container_logs: ContainerLogs | None = None,
    follow: bool = True,
) -> Check:
    """The check for ``spec``. ``container_logs``: the API's log streams of the agent's own Pod
    (log checks of a container's output need them); ``follow=False``: a log check reads what
    there is once (the ``check`` command)."""
    if spec.kind is CheckKind.LOG:
        return LogCheck(spec, clock, container_logs=container_logs, follow=follow)
    return _KINDS[spec.kind](spec, clock)  # type: ignore[call-arg]


__all__ = [
    "Check",
    "ContainerLogs",
    "LogLine",
    "LogRefusal",
    "LogStream",
    "LogStreamError",
    "RefusalKind",
    "build_check",
]
