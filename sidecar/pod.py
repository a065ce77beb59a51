"""The Pod observer: our own Pod, read once and then watched, handed to those who need it.

Like client-go's reflector for a single object: a GET, then a watch from its resourceVersion with
``fieldSelector=metadata.name=<pod>`` (the watch cache dispatches name-scoped watches by key since
Kubernetes 1.27, so one watch per Pod is cheap), bookmarks on, a randomised server-side
``timeoutSeconds`` and a client-side inactivity watchdog (the API server sends a bookmark about
every minute; a silent stream is a stuck one). When the server ends the watch it is opened again
from the last resourceVersion seen; ``410 Gone`` (too old) reads the Pod again. Every
``GATE_RESYNC_SECONDS`` the Pod is read again anyway, as a safety net. Failures back off like
the writer's, and are classified and logged once per kind by the shared :class:`ApiStatus`.

Every Pod seen (read or watched) goes to each consumer, in order: the container lifecycle
(:class:`sidecar.containers.Containers`) and the gate writer (level-triggered repair). A watch that
reports the Pod deleted, or a Pod with another UID, means our Pod is gone: the observer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import structlog

from sidecar.api import JSON, ApiResponse, PodApi, StreamBrokenError, WatchEvent, WatchStream
from sidecar.apihealth import ApiStatus
from sidecar.backoff import BACKOFF_BASE, BACKOFF_CAP, Backoff
from sidecar.clock import Clock
from sidecar.config import Identity
from sidecar.metrics import Metrics

#: Bounds of the server-side watch timeout, chosen at random for each watch (client-go picks 5-10
#: minutes); the server sends a last bookmark 2 s before it closes the stream.
WATCH_TIMEOUT = (240, 360)
#: A stream without an event or bookmark for this long is stuck (bookmarks come every ~60 s).
INACTIVITY = 90.0
#: A watch that ends sooner than this without an event counts as a failure (no reconnect storm).
SHORTEST_WATCH = 1.0

Consumer = Callable[[JSON, bool], None]
"""Called with every Pod seen, and whether it was read (True) or watched (False)."""


class PodObserver:
    def __init__(
        self,
        api: PodApi,
        status: ApiStatus,
        *,
        identity: Identity,
        clock: Clock,
        rng: random.Random,
        metrics: Metrics,
        resync: float,
        consumers: list[Consumer] | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        inactivity: float = INACTIVITY,
        watch_timeout: tuple[int, int] = WATCH_TIMEOUT,
    ) -> None:
        self._api = api
        self._status = status
        self._identity = identity
        self._clock = clock
        self._rng = rng
        self._metrics = metrics
        self._resync = resync
        self.consumers: list[Consumer] = list(consumers or [])
        self._backoff = Backoff(rng, backoff_base, backoff_cap)
        self._inactivity = inactivity
        self._watch_timeout = watch_timeout
        self._log = structlog.get_logger()
        self._reread = asyncio.Event()
        self._stream: WatchStream | None = None
        self._closing: asyncio.Future[None] | None = None
        self._stream_failed = False
        self._next_read: float | None = None
        self.uid = identity.pod_uid
        self.synced = False
        self.watching = False
        self.reads = 0
        self.watches = 0

    def reread(self) -> None:
        """Read the Pod again as soon as possible (a writer that got a 409)."""
        self._reread.set()
        if self._stream is not None:
            self._closing = asyncio.ensure_future(self._stream.aclose())

    async def run(self) -> None:
        """Observe until the Pod is gone."""
        version: str | None = None
        while not self._status.gone:
            if version is None or self._reread.is_set():
                version = await self._read()
                if version is None:
                    await self._back_off()
                    continue
            version = await self._watch(version)

    async def _back_off(self, retry_after: float | None = None) -> None:
        await self._clock.sleep(self._backoff.next_delay(retry_after))

    # --- reading -----------------------------------------------------------------------------

    async def _read(self) -> str | None:
        """GET the Pod; its resourceVersion, or None after a failure."""
        self._reread.clear()
        response = await self._api.get_pod()
        self.reads += 1
        if not response.ok:
            verdict = await self._status.failed("get", response)
            if verdict.retry_now:
                return await self._read()
            return None
        pod = response.body or {}
        if not self._ours(pod):
            return None
        self._status.recovered("get")
        self._backoff.reset()
        if self._resync > 0:
            self._next_read = self._clock.monotonic() + self._resync
        self._publish(pod, listed=True)
        if not self.synced:
            self.synced = True
            spec = pod.get("spec") or {}
            self._log.info(
                "pod_synced",
                readiness_gates=[g.get("conditionType") for g in spec.get("readinessGates") or []],
            )
        return _resource_version(pod) or ""

    def _ours(self, pod: JSON) -> bool:
        uid = (pod.get("metadata") or {}).get("uid")
        if self.uid and uid and uid != self.uid:
            self._status.pod_gone(
                f"pod {self._pod} now has uid {uid}, not ours ({self.uid}): it was deleted and "
                "replaced"
            )
            return False
        if not self.uid and isinstance(uid, str) and uid:
            self.uid = uid  # without POD_UID: guard against a replacement from now on
        return True

    def _publish(self, pod: JSON, *, listed: bool) -> None:
        for consume in self.consumers:
            consume(pod, listed)

    # --- watching ----------------------------------------------------------------------------

    async def _watch(self, version: str) -> str | None:
        """Watch from ``version`` until the stream ends; the version to go on from, or None to
        read the Pod again first."""
        opened = await self._open(version)
        if opened is None:
            return None  # a read was asked for while the watch was opening
        response, stream = opened
        if stream is None:
            return await self._watch_refused(version, response)
        self.watches += 1
        if not self._stream_failed:
            self._status.recovered("watch")  # it opens again: a refusal to open is over
        self._stream = stream
        self.watching = True
        resync = asyncio.ensure_future(self._resync_later())
        try:
            return await self._follow(stream, version)
        finally:
            resync.cancel()
            self.watching = False
            self._stream = None
            with contextlib.suppress(Exception):
                await stream.aclose()
            await asyncio.gather(resync, return_exceptions=True)

    async def _follow(self, stream: WatchStream, version: str) -> str | None:
        """Handle the stream's events; the version to go on from, or None to read first."""
        opened = self._clock.monotonic()
        events = 0
        try:
            async for event in stream:
                events += 1
                self._metrics.watch_events.labels(event.type).inc()
                next_version = await self._handle(event, version)
                if next_version is None or self._status.gone:
                    return next_version
                version = next_version
                if events == 1:  # a stream that delivers: whatever broke the last one is over
                    self._stream_failed = False
                    self._status.recovered("watch")
                    self._backoff.reset()
        except StreamBrokenError as err:
            if not self._reread.is_set():  # else we closed it ourselves
                await self._stream_broke(str(err), stuck=err.stuck)
        else:
            if not events and self._clock.monotonic() - opened < SHORTEST_WATCH:
                await self._stream_broke("the watch closed at once, without events", stuck=True)
        return None if self._reread.is_set() else version

    async def _stream_broke(self, message: str, code: int = 0, *, stuck: bool = False) -> None:
        """A stream that opened failed. A broken one is cured by the next that opens; a stuck one
        (silent, or ended at once) only by a stream that delivers (else a watch that opens and
        then says nothing would be logged as recovered and failed every time)."""
        self._stream_failed = self._stream_failed or stuck
        await self._status.failed("watch", ApiResponse(status=code, message=message))
        await self._back_off()

    async def _open(self, version: str) -> tuple[ApiResponse, WatchStream | None] | None:
        """Open a watch from ``version``; None when a read is asked for meanwhile."""
        timeout = self._rng.randint(*self._watch_timeout)
        opening = asyncio.ensure_future(
            self._api.watch_pod(version, timeout_seconds=timeout, inactivity=self._inactivity)
        )
        reread = asyncio.ensure_future(self._reread.wait())
        try:
            await asyncio.wait((opening, reread), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reread.cancel()
            if not opening.done():
                opening.cancel()
            await asyncio.gather(opening, reread, return_exceptions=True)
        if opening.cancelled():
            return None
        response, stream = opening.result()
        if self._reread.is_set():
            if stream is not None:
                await stream.aclose()
            return None
        return response, stream

    async def _resync_later(self) -> None:
        """Read the Pod again when the resync is due, even in the middle of a watch."""
        if self._next_read is None:
            return
        await self._clock.sleep(max(0.0, self._next_read - self._clock.monotonic()))
        self.reread()

    async def _watch_refused(self, version: str, response: ApiResponse) -> str | None:
        if response.status == 410:
            return None
        verdict = await self._status.failed("watch", response)
        if not verdict.retry_now:
            await self._back_off(response.retry_after)
        return version

    async def _handle(self, event: WatchEvent, version: str) -> str | None:
        if event.type == "ERROR":
            if event.code == 410:
                return None  # the version is too old: read the Pod again
            message = str(event.object.get("message") or event.object)
            await self._stream_broke(message, event.code or 0)
            return version
        if event.type == "DELETED":
            self._status.pod_gone(f"pod {self._pod} was deleted")
            return None
        newer = event.resource_version or version
        if event.type == "BOOKMARK":
            return newer
        if not self._ours(event.object):
            return None
        self._publish(event.object, listed=False)
        return newer

    @property
    def _pod(self) -> str:
        return f"{self._identity.namespace}/{self._identity.pod_name}"


def _resource_version(pod: dict[str, Any]) -> str | None:
    version = (pod.get("metadata") or {}).get("resourceVersion")
    return version if isinstance(version, str) else None
