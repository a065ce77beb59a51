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
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from enum import StrEnum

import structlog

from sidecar.checks.base import Check
from sidecar.clock import Clock
from sidecar.metrics import Metrics
from sidecar.model import CheckResult, bounded
from sidecar.results import CheckState, Results, Threshold

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
        self._log = structlog.get_logger().bind(check=self.spec.id, kind=str(self.spec.kind))
        self._event_driven = event_driven
        self.started_at = clock.monotonic()
        self.last_probe_at: float | None = None

    def overdue(self, now: float) -> bool:
        """True when this worker has stopped probing (for /healthz)."""
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
            await self._loop()

    async def _pump(self, wakeups: AsyncIterator[None]) -> None:
        # A broken source of events must not stop the worker: the periodic probes go on.
        try:
            async for _ in wakeups:
                self._wake.set()
        except Exception:
            self._log.exception("wakeups_failed", effect="probing on the period only")

    async def _loop(self) -> None:
        timing = self.spec.timing
        if timing.initial_delay > 0:
            await self._clock.sleep(timing.initial_delay)
        self._wake.clear()
        due = self._clock.monotonic()
        first = True
        while True:
            trigger = await self._wait(due, self._fast_due())
            started = self._clock.monotonic()
            result = await self.probe_once()
            counted = self._record(result, trigger)
            if trigger is Trigger.PERIODIC:
                due += self._rng.uniform(0, timing.period) if first else timing.period
                first = False
                # a slow probe must not cause a burst of catch-up probes
                due = max(due, self._clock.monotonic())
            elif trigger is Trigger.FAST and counted:
                due, first = started + timing.period, False

    def _fast_due(self) -> float | None:
        """When the next fast probe is due; None while the check is not looking for a success."""
        fast = self.spec.timing.fast_period
        if fast <= 0 or self.last_probe_at is None or self._threshold.state is CheckState.READY:
            return None
        if self._last is not None and self._last.ok:
            return None  # successes after the first are counted on the period
        return self.last_probe_at + fast

    async def _wait(self, due: float, fast_due: float | None) -> Trigger:
        """Sleep until the next probe is due, or an event comes first.

        While probing fast, the periodic probe too waits for the fast period to pass.
        """
        until = due if fast_due is None else fast_due
        if await self._sleep_until(until):
            return Trigger.EVENT
        return Trigger.PERIODIC if self._clock.monotonic() >= due else Trigger.FAST

    async def _sleep_until(self, due: float) -> bool:
        """Sleep until ``due``; return True if an event woke us first."""
        if self._wake.is_set():
            self._wake.clear()
            return True
        delay = due - self._clock.monotonic()
        if delay <= 0:
            return False
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)
        if self._wake.is_set():
            self._wake.clear()
            return True
        return False

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
            self._metrics.check_ready.labels(self.spec.id, self.spec.kind).set(_STATE_VALUE[state])
            self._log.info("check_state_changed", state=str(state), detail=result.detail)
        elif new_evidence:
            self._log.debug("check_evidence_changed", ok=result.ok, detail=result.detail)
        return counted


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
