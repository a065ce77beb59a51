"""Pure functions about Pod conditions: what to write, and the patch that writes exactly that.

The patch is a strategic merge patch on ``pods/status``: the API server merges ``status.conditions``
by ``type``, so it touches our condition and no other. The server never sets
``lastTransitionTime`` itself and keeps an old value when a patch omits it, so every patch carries
it: a new timestamp when the status flips, the existing one otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.results import GateReason, GateState

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None

    def to_json(self) -> JSON:
        body: JSON = {"type": self.type, "status": self.status}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.message is not None:
            body["message"] = self.message
        if self.last_transition_time is not None:
            body["lastTransitionTime"] = self.last_transition_time
        return body

    def says_the_same(self, other: Condition | None) -> bool:
        return other is not None and (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )


def timestamp(epoch_seconds: float) -> str:
    """RFC 3339 in whole seconds, as Kubernetes stores condition times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch_seconds)))


def pod_conditions(pod: Mapping[str, Any]) -> dict[str, Condition]:
    found: dict[str, Condition] = {}
    for raw in (pod.get("status") or {}).get("conditions") or []:
        if not isinstance(raw, dict):
            continue
        kind = raw.get("type")
        if isinstance(kind, str) and kind not in found:
            found[kind] = Condition(
                type=kind,
                status=str(raw.get("status")),
                reason=raw.get("reason"),
                message=raw.get("message"),
                last_transition_time=raw.get("lastTransitionTime"),
            )
    return found


def readiness_gates(pod: Mapping[str, Any]) -> list[str]:
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return [g["conditionType"] for g in gates if isinstance(g, dict) and "conditionType" in g]


def desired_condition(
    condition_type: str, state: GateState, current: Condition | None, now: float
) -> Condition | None:
    """The condition to write for ``state``, or None when the server already says it (or when a
    pending gate must not override what is there)."""
    if state.pending and current is not None:
        return None
    wanted = Condition(
        type=condition_type,
        status="True" if state.ok else "False",
        reason=str(state.reason),
        message=state.message,
    )
    if wanted.says_the_same(current):
        return None
    flipped = current is None or current.status != wanted.status
    since = timestamp(now) if flipped or current is None else current.last_transition_time
    return Condition(
        type=wanted.type,
        status=wanted.status,
        reason=wanted.reason,
        message=wanted.message,
        last_transition_time=since or timestamp(now),
    )


def stopped_condition(condition_type: str, current: Condition | None, now: float) -> Condition:
    state = GateState(
        key=None,
        ok=False,
        pending=False,
        reason=GateReason.STOPPED,
        message="the readiness-gate-sidecar stopped (GATE_ON_SHUTDOWN=false)",
    )
    stopped = desired_condition(condition_type, state, current, now)
    return stopped or Condition(
        type=condition_type,
        status="False",
        reason=str(GateReason.STOPPED),
        message=state.message,
        # every patch carries a transition time (the server keeps none of its own)
        last_transition_time=(current.last_transition_time if current else None) or timestamp(now),
    )


def status_patch(conditions: Iterable[Condition], uid: str | None) -> JSON:
    """A strategic merge patch with only our conditions (and the Pod UID as a guard)."""
    patch: JSON = {"status": {"conditions": [c.to_json() for c in conditions]}}
    if uid:
        patch["metadata"] = {"uid": uid}
    return patch


def missing_gate_snippet(condition_types: Iterable[str]) -> str:
    lines = ["spec:", "  readinessGates:"]
    lines += [f"  - conditionType: {t}" for t in condition_types]
    return "\n".join(lines)
