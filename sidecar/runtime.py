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
from sidecar.checks import Check, build_check
from sidecar.clock import Clock, SystemClock
from sidecar.config import Settings
from sidecar.gate import GateWriter, KubePodApi, PodApi
from sidecar.metrics import Metrics
from sidecar.model import ShutdownPolicy
from sidecar.prober import Worker
from sidecar.results import Results
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
        self.checks: list[Check] = [build_check(spec, self.clock) for spec in settings.checks]
        self.results = Results(settings.checks, settings.mode)
        self.workers = [
            Worker(
                c,
                self.results,
                clock=self.clock,
                rng=rng,
                metrics=self.metrics,
                event_driven=settings.event_driven,
            )
            for c in self.checks
        ]
        self.api: PodApi | None = None
        self.writer: GateWriter | None = None
        if settings.write:
            assert settings.identity is not None, "config requires POD_NAME/POD_NAMESPACE to write"
            self.api = api or KubePodApi(settings.api, settings.identity, self.metrics)
            self.writer = GateWriter(
                self.api,
                self.results,
                identity=settings.identity,
                condition_type=settings.condition_type,
                resync=settings.resync,
                events=settings.events,
                clock=self.clock,
                rng=rng,
                metrics=self.metrics,
            )
        self.server = Server(self, settings.http_host, settings.http_port)
        self._tasks: dict[str, asyncio.Task[None]] = {}

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
                for worker in self.workers:
                    self._spawn(group, f"check-{worker.spec.id}", worker.run())
                if self.writer is not None:
                    self._spawn(group, "gate-writer", self.writer.run())
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
        overdue = [w.spec.id for w in self.workers if w.overdue(now)]
        dead = [n for n, t in self._tasks.items() if t.done() and n != "gate-writer"]
        return not overdue and not dead, {"overdue_checks": overdue, "stopped_loops": dead}

    def ready(self) -> tuple[bool, str]:
        if self.writer is not None:
            if self.writer.status.synced:
                return True, "synchronised with the API server"
            return False, f"not yet synchronised with the API server ({self.writer.status.api})"
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
            }
        return {
            "pod": self._pod(),
            "write": self.settings.write,
            "api": {
                "health": str(writer.api),
                "message": writer.api_message,
                "writes": writer.writes,
            }
            if writer
            else None,
            "pod_declares": writer.pod_declares if writer else None,
            "gates": gates,
            "checks": {cid: _check_status(c) for cid, c in self.results.checks.items()},
        }

    def _pod(self) -> str | None:
        ident = self.settings.identity
        return f"{ident.namespace}/{ident.pod_name}" if ident else None


def _check_status(status: Any) -> dict[str, Any]:
    last = status.last
    return {
        "kind": str(status.spec.kind),
        "gate": status.spec.gate,
        "state": str(status.state),
        "changed_at": status.changed_at,
        "last": {"ok": last.ok, "detail": last.detail, "at": last.at, "duration": last.duration}
        if last
        else None,
    }


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
