"""Wiring: checks, workers, the results manager, the gate writer and the endpoints in one TaskGroup.

SIGTERM or SIGINT stops everything within a second: tasks are cancelled (a probe or an API call
in flight is abandoned), then, only with ``GATE_ON_SHUTDOWN=false``, one short attempt writes the
gate False, and the HTTP server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Mapping
from typing import Any

import structlog

from sidecar import __version__
from sidecar.api import KubePodApi, PodApi
from sidecar.apihealth import ApiStatus
from sidecar.checks import Check, build_check
from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.containers import Containers
from sidecar.events import EventRecorder
from sidecar.gate import GateWriter
from sidecar.metrics import Metrics
from sidecar.model import ShutdownPolicy
from sidecar.pod import PodObserver
from sidecar.podlogs import PodLogs
from sidecar.prober import Worker
from sidecar.results import CheckStatus, Results
from sidecar.server import Server


class _StopRequestedError(Exception):
    pass


class Agent:
    """Everything one agent runs; also the view the HTTP endpoints read."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        api: PodApi | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.metrics = Metrics()
        self.registry = self.metrics.registry
        self.api: PodApi | None = None
        logs: PodLogs | None = None
        if settings.write:
            identity = settings.identity
            assert identity is not None, "config requires POD_NAME/POD_NAMESPACE to write"
            self.api = api or KubePodApi(settings.api, identity, self.metrics)
            logs = PodLogs(self.api, identity.namespace)  # for checks of a container's output
        self.checks: list[Check] = [
            build_check(spec, self.clock, container_logs=logs) for spec in settings.checks
        ]
        self.results = Results(settings.checks, settings.mode)
        restarts = self.metrics.container_restarts
        self.containers = Containers(settings.container_name, lambda n: restarts.labels(n).inc())
        self.workers = {
            c.spec.id: Worker(
                c,
                self.results,
                clock=self.clock,
                rng=rng,
                metrics=self.metrics,
                event_driven=settings.event_driven,
                following=self.containers.follow(c.spec.container) if settings.write else None,
            )
            for c in self.checks
        }
        self.api_status: ApiStatus | None = None
        self.observer: PodObserver | None = None
        self.writer: GateWriter | None = None
        self.events: EventRecorder | None = None
        if self.api is not None:
            self._wire_api(settings, self.api, rng)
        self.server = Server(self, settings.http_host, settings.http_port)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _wire_api(self, settings: Settings, api: PodApi, rng: random.Random) -> None:
        identity = settings.identity
        assert identity is not None, "config requires POD_NAME/POD_NAMESPACE to write"
        self.api_status = ApiStatus(
            pod=f"{identity.namespace}/{identity.pod_name}",
            namespace=identity.namespace,
            reload_credentials=api.reload_credentials,
        )
        self.observer = PodObserver(
            api,
            self.api_status,
            identity=identity,
            clock=self.clock,
            rng=rng,
            metrics=self.metrics,
            resync=settings.resync,
        )
        observer = self.observer
        if settings.events:
            self.events = EventRecorder(
                api, identity=identity, uid=lambda: observer.uid, clock=self.clock,
                metrics=self.metrics,
            )  # fmt: skip
        self.writer = GateWriter(
            api,
            self.results,
            self.api_status,
            identity=identity,
            condition_type=settings.condition_type,
            clock=self.clock,
            rng=rng,
            metrics=self.metrics,
            events=self.events,
            uid=lambda: observer.uid,
            reread=observer.reread,
        )
        observer.consumers += [self._containers_seen, self.writer.observe]

    def _containers_seen(self, pod: Mapping[str, Any], _: bool) -> None:
        self.containers.update(pod)

    # --- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log = structlog.get_logger()
        try:
            # inside the try: a server that cannot listen (port in use) still closes the rest
            await self.server.start()
            log.info(
                "agent_started",
                version=__version__,
                listening=self.server.addresses,
                config=self.settings.describe(),
            )
            for warning in self.settings.warnings:
                log.warning("config_warning", message=warning)
            async with asyncio.TaskGroup() as group:
                for worker in self.workers.values():
                    self._spawn(group, f"check-{worker.spec.id}", worker.run())
                if self.writer is not None and self.observer is not None:
                    self._spawn(group, "pod-observer", self.observer.run())
                    self._spawn(group, "gate-writer", self.writer.run())
                if self.events is not None:
                    self._spawn(group, "events", self.events.run())
                group.create_task(_raise_when_set(stop))
        except* _StopRequestedError:
            pass
        finally:
            await self._shutdown()
            log.info("agent_stopped")

    def _spawn(self, group: asyncio.TaskGroup, name: str, coro: Any) -> None:
        self._tasks[name] = group.create_task(coro, name=name)

    async def _shutdown(self) -> None:
        if self.writer is not None and self.settings.on_shutdown is ShutdownPolicy.FALSE:
            with contextlib.suppress(Exception):
                await self.writer.write_stopped()
        await self.server.stop()
        for check in self.checks:
            with contextlib.suppress(Exception):
                await check.aclose()
        if self.api is not None:
            await self.api.aclose()

    # --- the view for the endpoints ----------------------------------------------------------

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        now = self.clock.monotonic()
        overdue = [w.spec.id for w in self.workers.values() if w.overdue(now)]
        # The API loops end on purpose when the Pod is gone.
        dead = [n for n, t in self._tasks.items() if t.done() and n not in _API_LOOPS]
        return not overdue and not dead, {"overdue_checks": overdue, "stopped_loops": dead}

    def ready(self) -> tuple[bool, str]:
        if self.writer is not None and self.api_status is not None:
            if self.api_status.gone:
                return False, f"not writing: {self.api_status.message}"
            if self.writer.status.synced:
                return True, "synchronised with the API server"
            return False, f"not yet synchronised with the API server ({self.api_status.health})"
        if self.results.has_results():
            return True, "every check has run"
        return False, "waiting for the first result of every check"

    def gates_pass(self) -> tuple[bool, str]:
        gates = self.results.gates()
        failing = [g for g in gates.values() if not g.ok]
        if not failing:
            return True, "; ".join(g.message for g in gates.values())
        return False, "; ".join(f"{g.reason}: {g.message}" for g in failing)

    def status(self) -> Mapping[str, Any]:
        writer = self.writer.status if self.writer else None
        gates = {}
        for key, state in self.results.gates().items():
            record = writer.gates.get(key) if writer else None
            server = record.server if record else None
            condition_type = (record.condition_type if record else None) or key
            gates[condition_type or "(the Pod's readiness gate)"] = {
                "condition_type": condition_type,
                "desired": {
                    "status": "Pending" if state.pending else str(state.ok),
                    "reason": str(state.reason),
                    "message": state.message,
                },
                "declared_in_pod": record.declared if record else None,
                "on_server": server.to_json() if server else None,
                "last_write_at": record.last_write_at if record else None,
                "transitions": record.transitions if record else 0,
                "repairs": record.repairs if record else 0,
            }
        api = self.api_status
        observer = self.observer
        return {
            "pod": self._pod(),
            "write": self.settings.write,
            "api": {
                "health": str(api.health),
                "message": api.message,
                "writes": writer.writes,
                "reads": observer.reads,
                "watches": observer.watches,
                "watching": observer.watching,
            }
            if writer and api and observer
            else None,
            "pod_declares": writer.pod_declares if writer else None,
            "gates": gates,
            "checks": {
                cid: _check_status(c, self.workers[cid]) for cid, c in self.results.checks.items()
            },
        }

    def _pod(self) -> str | None:
        ident = self.settings.identity
        return f"{ident.namespace}/{ident.pod_name}" if ident else None


def _check_status(status: CheckStatus, worker: Worker) -> dict[str, Any]:
    last = status.last
    lifecycle = worker.lifecycle
    return {
        "kind": str(status.spec.kind),
        "gate": status.spec.gate,
        "state": str(status.state),
        "cause": str(status.cause) if status.cause else None,
        "changed_at": status.changed_at,
        "follows": {
            "container": status.spec.container,
            "state": str(lifecycle.kind),
            "message": lifecycle.message or None,
            "containers": [i.describe() for i in lifecycle.instances],
        }
        if lifecycle is not None
        else None,
        "last": {"ok": last.ok, "detail": last.detail, "at": last.at, "duration": last.duration}
        if last
        else None,
    }


_API_LOOPS = frozenset({"pod-observer", "gate-writer"})


async def _raise_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _StopRequestedError


async def run(settings: Settings) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Agent(settings).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
