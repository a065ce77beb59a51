"""The gate writer: our Pod's gate condition(s), written only when they differ from the server's.

Status manager semantics. The Pod observer hands over every Pod it reads or watches
(:meth:`GateWriter.observe`): the writer learns the Pod's readiness gates and what the server
holds for each condition. It writes when the desired condition (from the results) differs from
the server's — after a check changed, or at once when something else changed the condition
(level-triggered repair: the watch shows it within milliseconds) — and never otherwise. Failures
back off exponentially with jitter (honouring ``Retry-After``); whatever the checks say when the
API answers again is what gets written, so a transition during an outage is not lost.

A watch event may show the Pod as it was before our own last write (the write's answer came
first): after each write, events are taken as the server's view again only from the one that
carries the resourceVersion the write returned, or a later one. (Resource versions are opaque to
clients by the API conventions; the ones the API server gives out are etcd revisions, which only
grow, so a later one is a larger number. Should one not be a number, only the very version the
write returned ends the wait, and the next read ends it too.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from sidecar.api import JSON, PodApi
from sidecar.apihealth import ApiStatus, Verdict
from sidecar.backoff import BACKOFF_BASE, BACKOFF_CAP, Backoff
from sidecar.clock import Clock
from sidecar.conditions import (
    Condition,
    desired_condition,
    missing_gate_snippet,
    pod_conditions,
    readiness_gates,
    status_patch,
    stopped_condition,
)
from sidecar.config import Identity
from sidecar.events import EventRecorder
from sidecar.metrics import Metrics
from sidecar.results import GateState, Results

SHUTDOWN_WRITE_TIMEOUT = 0.5


@dataclass(slots=True)
class GateRecord:
    """What /status shows about one gate."""

    key: str | None
    condition_type: str | None = None
    declared: bool | None = None
    server: Condition | None = None
    written: Condition | None = None  # the server's answer to our last write
    last_write_at: float | None = None
    last_write_status: str | None = None
    transitions: int = 0
    repairs: int = 0
    first_true_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Change:
    """One condition to write. ``before``: what the server held when we decided (the watch may
    show our own write before the write's answer comes back)."""

    record: GateRecord
    wanted: Condition
    state: GateState
    before: Condition | None


@dataclass(slots=True)
class WriterStatus:
    synced: bool = False
    pod_declares: list[str] = field(default_factory=list)
    gates: dict[str | None, GateRecord] = field(default_factory=dict)
    writes: int = 0


class GateWriter:
    def __init__(
        self,
        api: PodApi,
        results: Results,
        api_status: ApiStatus,
        *,
        identity: Identity,
        condition_type: str | None,
        clock: Clock,
        rng: random.Random,
        metrics: Metrics,
        events: EventRecorder | None = None,
        uid: Callable[[], str | None] | None = None,
        reread: Callable[[], None] = lambda: None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        shutdown_timeout: float = SHUTDOWN_WRITE_TIMEOUT,
    ) -> None:
        self._api = api
        self._results = results
        self._api_status = api_status
        self._identity = identity
        # The UID guard: from the downward API, else what the observer learned from its first read.
        self._uid = uid or (lambda: identity.pod_uid)
        self._default_type = condition_type
        self._events = events
        self._reread = reread
        self._clock = clock
        self._metrics = metrics
        self._backoff = Backoff(rng, backoff_base, backoff_cap)
        self._shutdown_timeout = shutdown_timeout
        self._started = clock.monotonic()
        self._log = structlog.get_logger()
        self._retry_at: float | None = None
        self._warned_unknown_type = False
        self._stale = False  # the server's view must be read again before writing (409)
        self._awaiting: str | None = None  # resourceVersion of our last write, until seen
        self._pod_version = 0
        self._pod_changed = asyncio.Event()
        self.status = WriterStatus(gates={k: GateRecord(key=k) for k in results.gate_keys})

    # --- what the observer sees ----------------------------------------------------------------

    def observe(self, pod: JSON, listed: bool) -> None:
        """Take in a Pod the observer read (``listed``) or watched."""
        version = (pod.get("metadata") or {}).get("resourceVersion")
        if listed:
            self._awaiting = None
            self._stale = False
        elif self._awaiting is not None:
            if not _not_older(version, self._awaiting):
                return  # from before our last write
            self._awaiting = None
        self.status.pod_declares = readiness_gates(pod)
        self._resolve_types()
        conditions = pod_conditions(pod)
        for record in self.status.gates.values():
            if record.condition_type:
                record.server = conditions.get(record.condition_type)
        self.status.synced = True
        self._pod_version += 1
        self._pod_changed.set()
        self._pod_changed = asyncio.Event()

    def _resolve_types(self) -> None:
        declared = self.status.pod_declares
        for key, record in self.status.gates.items():
            if record.condition_type is None:
                record.condition_type = key or self._default_type or self._single_gate(declared)
            was = record.declared
            record.declared = record.condition_type in declared if record.condition_type else False
            if record.condition_type and not record.declared and was is not False:
                self._not_declared(record.condition_type)

    def _single_gate(self, declared: list[str]) -> str | None:
        if len(declared) == 1:
            return declared[0]
        if self._warned_unknown_type:
            return None
        self._warned_unknown_type = True
        self._log.error(
            "gate_condition_type_unknown",
            readiness_gates=declared,
            fix="set GATE_CONDITION_TYPE to the readiness gate this agent reports"
            if declared
            else "declare a readiness gate in the Pod spec and set GATE_CONDITION_TYPE",
        )
        return None

    def _not_declared(self, condition_type: str) -> None:
        self._log.error(
            "gate_not_declared",
            condition_type=condition_type,
            pod_declares=self.status.pod_declares,
            effect="the kubelet ignores this condition for Ready; nothing is written",
            fix=f"add to the Pod spec (readinessGates cannot change on a running Pod):\n"
            f"{missing_gate_snippet([condition_type])}",
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Write whenever the desired condition differs from the server's. Returns only when the
        Pod is gone."""
        while not self._api_status.gone:
            await self._sleep_backoff()
            seen = (self._results.version, self._pod_version)
            if self.status.synced and not self._stale and not await self._write_changes():
                continue  # back off, then write whatever the checks say by then
            await self._wait_for_change(seen)

    async def write_stopped(self) -> None:
        """GATE_ON_SHUTDOWN=false: one quick attempt to write False before exiting."""
        if not self.status.synced or self._api_status.gone:
            return
        now = self._clock.time()
        conditions = [
            stopped_condition(record.condition_type, record.server, now)
            for record in self.status.gates.values()
            if record.condition_type and record.declared
        ]
        if not conditions:
            return
        response = await self._api.patch_status(
            status_patch(conditions, self._uid()), budget=self._shutdown_timeout
        )
        if response.ok:
            self._log.info("gate_written_on_shutdown", condition_types=[c.type for c in conditions])
        else:
            self._log.warning(
                "gate_not_written_on_shutdown",
                status=response.status or None,
                error=response.message,
            )

    # --- writing -----------------------------------------------------------------------------

    async def _write_changes(self) -> bool:
        """PATCH what differs from the server (nothing when nothing does). False on failure."""
        now = self._clock.time()
        gates = self._results.gates()
        changes: list[_Change] = []
        for key, record in self.status.gates.items():
            state = gates[key]
            self._metrics.gate_status.labels(record.condition_type or "").set(
                -1 if state.pending else int(state.ok)
            )
            if not (record.condition_type and record.declared):
                continue
            wanted = desired_condition(record.condition_type, state, record.server, now)
            if wanted is not None:
                changes.append(
                    _Change(record=record, wanted=wanted, state=state, before=record.server)
                )
        if not changes:
            return True
        patch = status_patch([c.wanted for c in changes], self._uid())
        response = await self._api.patch_status(patch)
        if not response.ok:
            self._failed(await self._api_status.failed("patch", response), response.retry_after)
            return False
        if self._api_status.recovered("patch"):
            self._backoff.reset()
        self.status.writes += 1
        pod = response.body or {}
        version = (pod.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str):
            self._awaiting = version  # until the watch shows this write, its events are older
        server = pod_conditions(pod)
        for change in changes:
            self._written(change, server.get(change.wanted.type, change.wanted), now)
        return True

    def _written(self, change: _Change, server: Condition, now: float) -> None:
        record, wanted, before = change.record, change.wanted, change.before
        flipped = before is None or before.status != wanted.status
        if record.last_write_status is not None and before != record.written:
            record.repairs += 1  # someone else changed it since our last write
            self._log.info(
                "gate_repaired",
                condition_type=wanted.type,
                found=before.to_json() if before else None,
            )
        record.server = server
        record.written = server
        record.last_write_at = now
        record.last_write_status = wanted.status
        self._log.info(
            "gate_written",
            condition_type=wanted.type,
            status=wanted.status,
            reason=wanted.reason,
            message=wanted.message,
        )
        if flipped:
            self._transitioned(record, wanted, change.state)

    def _transitioned(self, record: GateRecord, wanted: Condition, state: GateState) -> None:
        record.transitions += 1
        self._metrics.gate_transitions.labels(wanted.type, wanted.status).inc()
        if wanted.status == "True" and record.first_true_after is None:
            record.first_true_after = self._clock.monotonic() - self._started
            self._metrics.time_to_first_ready.labels(wanted.type).set(record.first_true_after)
        if self._events is not None and not state.pending:
            ready = wanted.status == "True"
            self._events.record(
                type_="Normal" if ready else "Warning",
                reason="ReadinessGateTrue" if ready else "ReadinessGateFalse",
                message=f"{wanted.type} is {wanted.status}: {wanted.message}",
            )

    # --- failures ----------------------------------------------------------------------------

    def _failed(self, verdict: Verdict, retry_after: float | None) -> None:
        if verdict.reread:
            self._stale = True
            self._reread()
        if verdict.gone:
            return
        # A rotated token is retried at once; a token that stays rejected backs off.
        wait = 0.0 if verdict.retry_now else self._backoff.next_delay(retry_after)
        self._retry_at = self._clock.monotonic() + wait

    async def _sleep_backoff(self) -> None:
        """Wait out the delay the last failure scheduled (nothing to wait after a success)."""
        if self._retry_at is not None:
            await self._clock.sleep(max(0.0, self._retry_at - self._clock.monotonic()))
            self._retry_at = None

    async def _wait_for_change(self, seen: tuple[int, int]) -> None:
        if (self._results.version, self._pod_version) != seen or self._api_status.gone:
            return
        waiter = asyncio.ensure_future(self._results.wait_changed(seen[0]))
        pod = asyncio.ensure_future(self._pod_changed.wait())
        gone = asyncio.ensure_future(self._api_status.gone_event.wait())
        tasks = {waiter, pod, gone}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _not_older(version: object, than: str) -> bool:
    """Whether a watch event at ``version`` shows the Pod at least as new as ``than``."""
    if version == than:
        return True
    if isinstance(version, str) and version.isdigit() and than.isdigit():
        return int(version) >= int(than)
    return False
