"""Kubernetes Events for gate transitions: best effort, asynchronous, aggregated.

The gate writer hands an event to :meth:`EventRecorder.record` and goes on: the event waits in a
bounded queue and a background task sends it, so a slow or hanging Events endpoint never delays a
status write. When the queue is full the event is dropped (counted in
``readiness_gate_events_dropped_total{reason="queue_full"}``).

Like client-go's EventRecorder (tools/record): an event identical to one sent before (same type,
reason and message about the same Pod) is not a new object but a PATCH of the existing one's
``count`` and ``lastTimestamp`` (``kubectl describe`` shows "x5 over 3m"), so a flapping gate
creates two Event objects, not one per flip; and a token bucket per Pod (a burst of 25, then one
event per 5 minutes) stops a flapping gate from flooding the API with them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from sidecar.api import JSON, PodApi
from sidecar.clock import Clock
from sidecar.conditions import timestamp
from sidecar.config import Identity
from sidecar.metrics import Metrics

COMPONENT = "readiness-gate-sidecar"
QUEUE_SIZE = 64
CACHE_SIZE = 32
BURST = 25
REFILL_SECONDS = 300.0
MESSAGE_LIMIT = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    type: str
    reason: str
    message: str
    at: float  # epoch seconds


@dataclass(slots=True)
class _Sent:
    name: str
    count: int
    first: str


class _TokenBucket:
    def __init__(self, clock: Clock, burst: int, refill: float) -> None:
        self._clock = clock
        self._burst = burst
        self._refill = refill
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def take(self) -> bool:
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._refill)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class EventRecorder:
    def __init__(
        self,
        api: PodApi,
        *,
        identity: Identity,
        uid: Callable[[], str | None],
        clock: Clock,
        metrics: Metrics,
        queue_size: int = QUEUE_SIZE,
        burst: int = BURST,
        refill: float = REFILL_SECONDS,
    ) -> None:
        self._api = api
        self._identity = identity
        self._uid = uid
        self._clock = clock
        self._metrics = metrics
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(queue_size)
        self._bucket = _TokenBucket(clock, burst, refill)
        self._sent: OrderedDict[tuple[str, str, str], _Sent] = OrderedDict()
        self._warned = False
        self._log = structlog.get_logger()

    def record(self, *, type_: str, reason: str, message: str) -> None:
        """Queue an event; never waits. Dropped (and counted) when the queue is full."""
        event = _Event(
            type=type_, reason=reason, message=message[:MESSAGE_LIMIT], at=self._clock.time()
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.events_dropped.labels("queue_full").inc()

    async def run(self) -> None:
        """Send queued events, one at a time, until cancelled."""
        while True:
            event = await self._queue.get()
            if not self._bucket.take():
                self._metrics.events_dropped.labels("rate_limited").inc()
                continue
            await self._send(event)

    async def _send(self, event: _Event) -> None:
        key = (event.type, event.reason, event.message)
        now = timestamp(event.at)
        sent = self._sent.get(key)
        if sent is not None:
            response = await self._api.patch_event(
                sent.name, {"count": sent.count + 1, "lastTimestamp": now}
            )
            if response.ok:
                sent.count += 1
                self._sent.move_to_end(key)
                return
            if response.status != 404:  # 404: the Event expired (1 h); create it again
                self._refused(response.status, response.message)
                return
            del self._sent[key]
        response = await self._api.create_event(self._body(event, now))
        name = ((response.body or {}).get("metadata") or {}).get("name")
        if not response.ok or not isinstance(name, str):
            self._refused(response.status, response.message)
            return
        self._sent[key] = _Sent(name=name, count=1, first=now)
        while len(self._sent) > CACHE_SIZE:
            self._sent.popitem(last=False)

    def _body(self, event: _Event, now: str) -> JSON:
        ident = self._identity
        uid = self._uid()
        return {
            "metadata": {"generateName": f"{ident.pod_name}.", "namespace": ident.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": ident.pod_name,
                "namespace": ident.namespace,
                **({"uid": uid} if uid else {}),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": ident.pod_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    def _refused(self, status: int, message: str) -> None:
        self._metrics.events_dropped.labels("refused").inc()
        if self._warned:
            return
        self._warned = True
        self._log.warning(
            "event_not_created",
            status=status,
            error=message,
            fix="grant create and patch on events in the Pod's namespace, or set GATE_EVENTS=false"
            if status == 403
            else None,
        )

    async def aclose(self) -> None:
        """Forget what is queued (events are best effort)."""
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._queue.get_nowait()
