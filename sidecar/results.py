"""Latest state per check, aggregation per gate, and change notification.

A check is PENDING until its thresholds decide: ``success_threshold`` consecutive successes make it
READY, ``failure_threshold`` consecutive failures make it NOT_READY (kubelet semantics). Pending is
not a failure: it never turns a gate condition that is already True on the API server to False, so
a restarted agent cannot cause an outage before it has evidence.

The container lifecycle adds a :class:`Cause` to a check's state. A check whose container is not
running is NOT_READY at once (``CONTAINER_NOT_RUNNING``, no failure threshold). A check whose
container has a new instance is PENDING again, but *known* not to be ready
(``CONTAINER_RESTARTED``): whatever the server says was evidence of the previous instance, so such a
check makes its gate False (``ContainerRestarted``) until its thresholds decide again. The first
instance, when the agent saw it start (the agent started first), makes it False too
(``ChecksPending``: nothing has been decided yet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from sidecar.model import CheckResult, CheckSpec, GateMode, bounded

MESSAGE_LIMIT = 512


class CheckState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    NOT_READY = "not_ready"


class GateReason(StrEnum):
    PASSED = "ChecksPassed"
    FAILED = "CheckFailed"
    PENDING = "ChecksPending"
    STOPPED = "AgentStopped"
    CONTAINER_NOT_RUNNING = "ContainerNotRunning"
    CONTAINER_RESTARTED = "ContainerRestarted"


class Cause(StrEnum):
    """Why a check is in its state when the container lifecycle, not a probe, put it there."""

    CONTAINER_NOT_RUNNING = "container_not_running"
    CONTAINER_STARTED = "container_started"  # its first instance, seen starting by the agent
    CONTAINER_RESTARTED = "container_restarted"  # a new instance after another


_STARTED = frozenset({Cause.CONTAINER_STARTED, Cause.CONTAINER_RESTARTED})


class Threshold:
    """Consecutive-result counting, exactly as the kubelet's prober worker does it."""

    def __init__(self, success_threshold: int, failure_threshold: int) -> None:
        self._needed = {True: success_threshold, False: failure_threshold}
        self._last: bool | None = None
        self._run = 0
        self.state = CheckState.PENDING

    def reset(self, state: CheckState = CheckState.PENDING) -> None:
        """Start counting afresh (a new container instance), from ``state``."""
        self._last = None
        self._run = 0
        self.state = state

    def record(self, ok: bool) -> CheckState:
        self._run = self._run + 1 if ok == self._last else 1
        self._last = ok
        if self._run >= self._needed[ok]:
            self.state = CheckState.READY if ok else CheckState.NOT_READY
        return self.state


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckStatus:
    spec: CheckSpec
    state: CheckState
    last: CheckResult | None
    changed_at: float | None
    # The latest result that agrees with ``state`` (a success while READY, a failure while
    # NOT_READY, any result while PENDING): what the gate's message shows. A result that disagrees
    # without changing the state (fewer failures than the failure threshold) is only ``last``, so
    # it changes neither the condition's message nor costs a write.
    evidence: CheckResult | None = None
    cause: Cause | None = None

    @property
    def known_not_ready(self) -> bool:
        """Not ready, decided: NOT_READY, or PENDING after the container started (anew)."""
        return self.state is CheckState.NOT_READY or self.cause in _STARTED

    @property
    def summary(self) -> str:
        shown = self.evidence or self.last
        if shown is None:
            return f"{self.spec.label}: no result yet"
        return f"{self.spec.label}: {shown.detail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class GateState:
    """What the gate condition should say. ``pending``: no decision yet (do not override True)."""

    key: str | None
    ok: bool
    pending: bool
    reason: GateReason
    message: str


def aggregate(key: str | None, mode: GateMode, checks: Iterable[CheckStatus]) -> GateState:
    checks = list(checks)
    ready = [c for c in checks if c.state is CheckState.READY]
    failed = [c for c in checks if c.known_not_ready]
    pending = [c for c in checks if c.state is CheckState.PENDING and not c.known_not_ready]
    if mode is GateMode.ALL:
        passed, decided_false = not failed and not pending, bool(failed)
    else:
        passed, decided_false = bool(ready), not ready and not pending
    if passed:
        shown = ready if mode is GateMode.ANY else checks
        return _state(key, ok=True, pending=False, reason=GateReason.PASSED, shown=shown)
    if decided_false:
        return _state(key, ok=False, pending=False, reason=_failure_reason(failed), shown=failed)
    return _state(key, ok=False, pending=True, reason=GateReason.PENDING, shown=pending)


def _failure_reason(failed: list[CheckStatus]) -> GateReason:
    """CheckFailed when a probe failed; else what the container lifecycle says."""
    causes = {c.cause for c in failed}
    if None in causes:
        return GateReason.FAILED
    if Cause.CONTAINER_NOT_RUNNING in causes:
        return GateReason.CONTAINER_NOT_RUNNING
    if Cause.CONTAINER_RESTARTED in causes:
        return GateReason.CONTAINER_RESTARTED
    return GateReason.PENDING  # its first instance just started: the checks have not decided


def _state(
    key: str | None, *, ok: bool, pending: bool, reason: GateReason, shown: list[CheckStatus]
) -> GateState:
    if reason is GateReason.PENDING:
        labels = ", ".join(c.spec.label for c in shown)
        message = f"waiting for the checks to decide: {labels}"
    else:
        message = "; ".join(c.summary for c in shown)
    return GateState(
        key=key, ok=ok, pending=pending, reason=reason, message=bounded(message, MESSAGE_LIMIT)
    )


class Results:
    """The results manager: prober workers write into it, the gate writer and endpoints read."""

    def __init__(self, specs: Iterable[CheckSpec], mode: GateMode) -> None:
        self.mode = mode
        self._checks: dict[str, CheckStatus] = {
            s.id: CheckStatus(spec=s, state=CheckState.PENDING, last=None, changed_at=None)
            for s in specs
        }
        self._gates: dict[str | None, list[str]] = {}
        for spec in self._checks.values():
            self._gates.setdefault(spec.spec.gate, []).append(spec.spec.id)
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    @property
    def checks(self) -> Mapping[str, CheckStatus]:
        return self._checks

    @property
    def gate_keys(self) -> list[str | None]:
        return list(self._gates)

    def gate(self, key: str | None) -> GateState:
        return aggregate(key, self.mode, (self._checks[i] for i in self._gates[key]))

    def gates(self) -> dict[str | None, GateState]:
        return {key: self.gate(key) for key in self._gates}

    def has_results(self) -> bool:
        return all(c.last is not None for c in self._checks.values())

    def update(
        self, check_id: str, result: CheckResult, state: CheckState, cause: Cause | None = None
    ) -> bool:
        """Record a probe outcome; True when anything a reader shows changed.

        ``cause``: the container lifecycle decided ``state``. A check pending after its container
        started anew stays known-not-ready while its probes keep it pending.
        """
        old = self._checks[check_id]
        if cause is None and state is CheckState.PENDING and old.state is CheckState.PENDING:
            cause = old.cause
        # An inconclusive result (still reading) is shown as ``last`` but never as the evidence.
        agrees = not result.inconclusive and (
            state is CheckState.PENDING or result.ok == (state is CheckState.READY)
        )
        if cause in _STARTED and old.cause is cause:
            agrees = False  # the message keeps saying why: the container started (anew)
        evidence = result if agrees else old.evidence
        same = old.state is state and old.cause is cause and result.same_evidence(old.last)
        changed_at = result.at if old.state is not state else old.changed_at
        self._checks[check_id] = CheckStatus(
            spec=old.spec,
            state=state,
            last=result,
            changed_at=changed_at,
            evidence=evidence,
            cause=cause,
        )
        if same:
            return False
        self._version += 1
        self._notify()
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, seen_version: int) -> int:
        """Return the current version once it differs from ``seen_version``."""
        while self._version == seen_version:
            await self._changed.wait()
        return self._version
