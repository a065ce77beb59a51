"""One module per check kind; ``build_check`` picks the right one for a spec."""

from __future__ import annotations

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


def build_check(spec: CheckSpec, clock: Clock) -> Check:
    return _KINDS[spec.kind](spec, clock)  # type: ignore[call-arg]


__all__ = ["Check", "build_check"]
