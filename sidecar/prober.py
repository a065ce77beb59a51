"""When to check: one worker per check, with kubelet probe timing.

The first probe runs right after the initial delay; the second after a random fraction of the
period (so checks, and agents on the same node, do not probe in lockstep); then one per period.
Event-driven checks also probe as soon as their ``wakeups()`` fire. A probe triggered by an event
counts towards the thresholds only when it brings new evidence (a different ``(ok, detail)``), so a
busy log file cannot satisfy a success threshold of 3 within a millisecond. An inconclusive result
(a log check still reading a big backlog) never counts: the check keeps its state.

Checks with a fast period (tcp, http) also probe fast while they look for their first success: not
ready, and the last counted result a failure (or none yet). Meanwhile every probe, the periodic one
too, starts one fast period after the previous probe ended: probes never overlap, a slow one delays
the next instead of causing a burst, and there is at most one probe per fast period. A fast probe
counts only when it succeeds: failures count on the period alone, so ``failure_threshold`` keeps
its kubelet meaning. After a fast success the periodic schedule restarts from it, so further
successes towards ``success_threshold`` are a full period apart.

Container lifecycle (when the Pod observer reports the followed containers, like the kubelet's
prober worker, pkg/kubelet/prober/worker.go):

- while a followed container is not running (or a named one does not exist), the check is
  NOT_READY at once, without a failure threshold, and is not probed;
- a new instance (another container ID or restart count) resets the check: PENDING, known not to
  be ready (its gate is False until the thresholds decide), thresholds counted afresh, evidence
  older than the instance's ``startedAt`` forgotten (:meth:`Check.forget_before`), and the initial
  delay counted from ``startedAt``;
- the first instance seen when the agent itself starts is not a restart: the check stays merely
  pending (a True on the server is kept until it decides), but older evidence is forgotten and the
  initial delay counts from ``startedAt`` too.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from enum import StrEnum

import structlog

from sidecar.checks.base import Check
from sidecar.clock import Clock
from sidecar.containers import Following, FollowKind, FollowState
from sidecar.metrics import Metrics
from sidecar.model import CheckResult, bounded
from sidecar.results import Cause, CheckState, Results, Threshold

_STATE_VALUE = {CheckState.READY: 1, CheckState.NOT_READY: 0, CheckState.PENDING: -1}


class Trigger(StrEnum):
    """Why a probe runs, which decides whether its result counts (``counts``)."""

    PERIODIC = "periodic"
    EVENT = "event"
    FAST = "fast"


def counts(trigger: Trigger, *, ok: bool, new_evidence: bool) -> bool:
    """Whether a probe's result counts toward the thresholds."""
    if trigger is Trigger.PERIODIC:
        return True
    if trigger is Trigger.EVENT:
        return new_evidence
    return ok  # a fast probe looks for the first success; failures count on the period


class _Wake(StrEnum):
    EVIDENCE = "evidence"
    LIFECYCLE = "lifecycle"


class Worker:
    def __init__(
        self,
        check: Check,
        results: Results,
        *,
        clock: Clock,
        rng: random.Random,
        metrics: Metrics,
        event_driven: bool = True,
        following: Following | None = None,
    ) -> None:
        self.check = check
        self.spec = check.spec
        self._results = results
        self._clock = clock
        self._rng = rng
        self._metrics = metrics
        self._threshold = Threshold(
            self.spec.timing.success_threshold, self.spec.timing.failure_threshold
        )
        self._last: CheckResult | None = None
        self._wake = asyncio.Event()
        self._reasons: set[_Wake] = set()
        self._log = structlog.get_logger().bind(check=self.spec.id, kind=str(self.spec.kind))
        self._event_driven = event_driven
        self._following = following
        self.lifecycle: FollowState | None = None  # what the check follows, as last applied
        self._instance: tuple[tuple[str, str | None, int], ...] | None = None
        self._held: str | None = None  # why probing is suspended (container not running)
        self._due = 0.0  # the next periodic probe
        self._first = True  # no probe yet (of this instance): it comes after the initial delay
        self.started_at = clock.monotonic()
        self.last_probe_at: float | None = None

    def overdue(self, now: float) -> bool:
        """True when this worker has stopped probing (for /healthz)."""
        if self._held is not None or self._due > now:
            return False  # not probing on purpose, or the next probe is not due yet
        timing = self.spec.timing
        allowance = 2 * (timing.period + timing.timeout) + 5
        reference = (
            self.started_at + timing.initial_delay
            if self.last_probe_at is None
            else self.last_probe_at
        )
        return now - reference > allowance

    async def run(self) -> None:
        self._metrics.check_ready.labels(self.spec.id, self.spec.kind).set(-1)
        self.started_at = self._clock.monotonic()
        wakeups = self.check.wakeups() if self._event_driven else None
        async with asyncio.TaskGroup() as group:
            if wakeups is not None:
                group.create_task(self._pump(wakeups), name=f"wakeups-{self.spec.id}")
            if self._following is not None:
                group.create_task(self._watch_lifecycle(), name=f"lifecycle-{self.spec.id}")
            await self._loop()

    def _signal(self, reason: _Wake) -> None:
        self._reasons.add(reason)
        self._wake.set()

    async def _pump(self, wakeups: AsyncIterator[None]) -> None:
        # A broken source of events must not stop the worker: the periodic probes go on.
        try:
            async for _ in wakeups:
                self._signal(_Wake.EVIDENCE)
        except Exception:
            self._log.exception("wakeups_failed", effect="probing on the period only")

    async def _watch_lifecycle(self) -> None:
        assert self._following is not None
        version = self._following.version
        while True:
            version = await self._following.wait_changed(version)
            self._signal(_Wake.LIFECYCLE)

    async def _loop(self) -> None:
        timing = self.spec.timing
        self._due = self._clock.monotonic() + timing.initial_delay
        self._apply_lifecycle()
        while True:
            trigger = await self._next_trigger()
            started = self._clock.monotonic()
            result = await self.probe_once()
            counted = self._record(result, trigger)
            if trigger is Trigger.PERIODIC:
                self._due += self._rng.uniform(0, timing.period) if self._first else timing.period
                self._first = False
                # a slow probe must not cause a burst of catch-up probes
                self._due = max(self._due, self._clock.monotonic())
            elif trigger is Trigger.FAST and counted:
                self._due, self._first = started + timing.period, False

    async def _next_trigger(self) -> Trigger:
        """Wait until a probe is due, applying the container lifecycle as it changes."""
        while True:
            reasons = await self._wait(self._until())
            if _Wake.LIFECYCLE in reasons:
                self._apply_lifecycle()
            if self._held is not None:
                continue
            # Events count only once probing started: the first probe covers what came before.
            if _Wake.EVIDENCE in reasons and not self._first:
                return Trigger.EVENT
            if not reasons:
                return Trigger.PERIODIC if self._clock.monotonic() >= self._due else Trigger.FAST

    def _until(self) -> float | None:
        """When the next probe is due; None while the container is not running (no probes)."""
        if self._held is not None:
            return None
        fast_due = self._fast_due()
        # While probing fast, the periodic probe too waits for the fast period to pass.
        return self._due if fast_due is None else fast_due

    def _fast_due(self) -> float | None:
        """When the next fast probe is due; None while the check is not looking for a success."""
        fast = self.spec.timing.fast_period
        if fast <= 0 or self._first or self.last_probe_at is None:
            return None
        if self._threshold.state is CheckState.READY:
            return None
        if self._last is not None and self._last.ok:
            return None  # successes after the first are counted on the period
        return self.last_probe_at + fast

    async def _wait(self, until: float | None) -> set[_Wake]:
        """Sleep until ``until`` (None: no time limit) or until something is signalled; return
        what was signalled (nothing: the time came)."""
        if until is None:
            await self._wake.wait()
        elif not self._wake.is_set() and (delay := until - self._clock.monotonic()) > 0:
            sleeper = asyncio.ensure_future(self._clock.sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)
        self._wake.clear()
        reasons, self._reasons = self._reasons, set()
        return reasons

    # --- container lifecycle -------------------------------------------------------------------

    def _apply_lifecycle(self) -> None:
        if self._following is None:
            return
        state = self._following.state()
        self.lifecycle = state
        if state.kind in (FollowKind.NOT_RUNNING, FollowKind.MISSING):
            self._hold(state)
        elif state.kind is FollowKind.RUNNING and state.keys != self._instance:
            self._new_instance(state)
        elif state.kind is FollowKind.RUNNING:
            self._held = None

    def _hold(self, state: FollowState) -> None:
        if self._held == state.message:
            return
        if state.kind is FollowKind.MISSING and self._held is None:
            self._log.error("check_container_unknown", error=state.message)
        self._held = state.message
        self._threshold.reset(CheckState.NOT_READY)
        self._last = None
        cause = Cause.CONTAINER_NOT_RUNNING if state.kind is FollowKind.NOT_RUNNING else None
        result = self._synthetic(ok=False, detail=state.message)
        self._set_state(result, CheckState.NOT_READY, cause)

    def _new_instance(self, state: FollowState) -> None:
        previous, self._instance = self._instance, state.keys
        was_held, self._held = self._held is not None, None
        started = state.started_at
        if started is not None:
            self.check.forget_before(started)
        at_agent_start = previous is None and not was_held
        if at_agent_start and not self._first:
            return  # probing began before the Pod was first read: keep the schedule
        if not at_agent_start:
            self._reset(state, restarted=previous is not None)
        if started is not None:
            # the initial delay counts from the container's start, as for kubelet probes
            since_start = self._clock.time() - started
            wait = max(0.0, self.spec.timing.initial_delay - since_start)
            self._due = self._clock.monotonic() + wait

    def _reset(self, state: FollowState, *, restarted: bool) -> None:
        self._threshold.reset()
        self._last = None
        self._first = True
        self._log.info("container_started", **_describe(state), restarted=restarted)
        self._set_state(
            self._synthetic(ok=False, detail=_started(state, restarted=restarted)),
            CheckState.PENDING,
            Cause.CONTAINER_RESTARTED if restarted else Cause.CONTAINER_STARTED,
        )

    def _synthetic(self, *, ok: bool, detail: str) -> CheckResult:
        return CheckResult(ok=ok, detail=bounded(detail, 200), at=self._clock.time())

    def _set_state(self, result: CheckResult, state: CheckState, cause: Cause | None) -> None:
        before = self._results.checks[self.spec.id].state
        self._results.update(self.spec.id, result, state, cause)
        self._state_changed(before, state, result)

    def _state_changed(self, before: CheckState, state: CheckState, result: CheckResult) -> None:
        if state is not before:
            self._metrics.check_ready.labels(self.spec.id, self.spec.kind).set(_STATE_VALUE[state])
            self._log.info("check_state_changed", state=str(state), detail=result.detail)

    # --- probing -------------------------------------------------------------------------------

    async def probe_once(self) -> CheckResult:
        result = await probe(self.check, self._clock)
        self.last_probe_at = self._clock.monotonic()
        labels = (self.spec.id, self.spec.kind)
        self._metrics.check_duration.labels(*labels).observe(result.duration)
        outcome = "inconclusive" if result.inconclusive else "success" if result.ok else "failure"
        self._metrics.check_results.labels(*labels, outcome).inc()
        return result

    def _record(self, result: CheckResult, trigger: Trigger) -> bool:
        """Count ``result`` if its trigger lets it; True if it counted."""
        if result.inconclusive:  # neither success nor failure: shown, not counted
            self._results.update(self.spec.id, result, self._threshold.state)
            return False
        new_evidence = not result.same_evidence(self._last)
        counted = counts(trigger, ok=result.ok, new_evidence=new_evidence)
        if trigger is Trigger.FAST and not counted:
            return False  # neither shown nor counted: the message changes at most once a period
        before = self._threshold.state
        state = before
        if counted:
            self._last = result
            state = self._threshold.record(result.ok)
        self._results.update(self.spec.id, result, state)
        if state is not before:
            self._state_changed(before, state, result)
        elif new_evidence:
            self._log.debug("check_evidence_changed", ok=result.ok, detail=result.detail)
        return counted


def _started(state: FollowState, *, restarted: bool) -> str:
    names = ", ".join(i.name for i in state.instances)
    if not restarted:
        return f"container {names} started: waiting for the check"
    restarts = max(i.restart_count for i in state.instances)
    return f"container {names} restarted (restart {restarts}): waiting for the check"


def _describe(state: FollowState) -> dict[str, object]:
    return {"containers": [i.describe() for i in state.instances]}


async def probe(check: Check, clock: Clock) -> CheckResult:
    """One probe bounded by the check's timeout; a timeout or a defect is a failed result."""
    timeout = check.spec.timing.timeout
    started = clock.monotonic()
    try:
        async with asyncio.timeout(timeout):
            return await check.probe()
    except TimeoutError:
        detail = f"timed out after {timeout:g}s"
    except Exception as exc:  # a defect in one check must not stop the agent
        structlog.get_logger().exception("check_error", check=check.spec.id)
        detail = bounded(f"check error: {type(exc).__name__}: {exc}", 200)
    return CheckResult(
        ok=False, detail=detail, at=clock.time(), duration=clock.monotonic() - started
    )
