"""HTTP endpoints: /healthz /readyz /gate /status /metrics (aiohttp, embedded, no signal handling).

- ``/healthz``: the agent's loops are alive (use it for the sidecar's livenessProbe).
- ``/readyz``: the agent has synchronised with the API at least once (probe-only mode: every
  check has produced a result). Use it for the sidecar container's own readinessProbe.
- ``/gate``: 200 when every gate passes, 503 otherwise: the readinessProbe in probe-only mode.
- ``/status``: JSON with every check's last result and each gate's state and last write.
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

SHUTDOWN_TIMEOUT = 0.25


class AgentView(Protocol):
    registry: CollectorRegistry

    def health(self) -> tuple[bool, Mapping[str, Any]]: ...

    def ready(self) -> tuple[bool, str]: ...

    def gates_pass(self) -> tuple[bool, str]: ...

    def status(self) -> Mapping[str, Any]: ...


def make_app(view: AgentView) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, detail = view.health()
        return web.json_response({"ok": ok, **detail}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, why = view.ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def gate(_: web.Request) -> web.Response:
        ok, why = view.gates_pass()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(view.status(), dumps=_dumps)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(view.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/gate", gate)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    return app


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


class Server:
    """The endpoints, started and stopped by the runtime."""

    def __init__(self, view: AgentView, host: str | None, port: int) -> None:
        self._app = make_app(view)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        self.addresses = [_format(name) for name in self._runner.addresses]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _format(name: Any) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
