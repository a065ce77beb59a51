"""The HTTP endpoints on a real socket, backed by a stub view of the agent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics
from sidecar.server import Server


@dataclass
class StubView:
    """An ``AgentView`` whose answers the test sets."""

    registry: CollectorRegistry
    healthy: bool = True
    is_ready: bool = False
    passing: bool = False
    state: dict[str, Any] = field(default_factory=dict)

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        overdue = [] if self.healthy else ["APP"]
        return self.healthy, {"overdue_checks": overdue, "stopped_loops": []}

    def ready(self) -> tuple[bool, str]:
        if self.is_ready:
            return True, "every check has run"
        return False, "waiting for the first result of every check"

    def gates_pass(self) -> tuple[bool, str]:
        if self.passing:
            return True, "file APP: /run/ready exists"
        return False, "CheckFailed: file APP: /run/ready does not exist"

    def status(self) -> Mapping[str, Any]:
        return self.state


@dataclass
class Running:
    view: StubView
    metrics: Metrics
    server: Server
    url: str
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.http.get(self.url + path) as response:
            return response.status, response.headers["Content-Type"], await response.text()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    metrics = Metrics()
    view = StubView(registry=metrics.registry)
    server = Server(view, "127.0.0.1", 0)
    await server.start()
    try:
        [address] = server.addresses
        async with aiohttp.ClientSession() as http:
            yield Running(view, metrics, server, f"http://{address}", http)
    finally:
        await server.stop()


def port_of(server: Server) -> int:
    [address] = server.addresses
    return int(address.rpartition(":")[2])


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_the_server_listens_on_an_ephemeral_port() -> None:
    server = Server(StubView(registry=Metrics().registry), "127.0.0.1", 0)
    await server.start()
    try:
        [address] = server.addresses
        assert address.startswith("127.0.0.1:")
        assert port_of(server) > 0
    finally:
        await server.stop()


async def test_healthz_is_200_while_the_loops_are_alive(running: Running) -> None:
    status, content_type, body = await running.get("/healthz")

    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert json.loads(body) == {"ok": True, "overdue_checks": [], "stopped_loops": []}


async def test_healthz_is_503_when_a_loop_is_stuck(running: Running) -> None:
    running.view.healthy = False

    status, _, body = await running.get("/healthz")

    assert status == 503
    assert json.loads(body) == {"ok": False, "overdue_checks": ["APP"], "stopped_loops": []}


async def test_readyz_follows_the_agent_readiness(running: Running) -> None:
    assert await running.get("/readyz") == (
        503,
        "text/plain; charset=utf-8",
        "waiting for the first result of every check\n",
    )

    running.view.is_ready = True

    assert await running.get("/readyz") == (
        200,
        "text/plain; charset=utf-8",
        "every check has run\n",
    )


async def test_gate_is_503_until_every_gate_passes(running: Running) -> None:
    status, _, body = await running.get("/gate")
    assert (status, body) == (503, "CheckFailed: file APP: /run/ready does not exist\n")

    running.view.passing = True

    status, _, body = await running.get("/gate")
    assert (status, body) == (200, "file APP: /run/ready exists\n")


async def test_status_is_the_view_as_json(running: Running) -> None:
    running.view.state = {"write": False, "checks": {"APP": {"state": "ready", "at": 1.5}}}

    status, content_type, body = await running.get("/status")

    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert json.loads(body) == {"write": False, "checks": {"APP": {"state": "ready", "at": 1.5}}}


async def test_status_renders_values_json_does_not_know_as_text(running: Running) -> None:
    running.view.state = {"path": Path("/run/ready")}

    _, _, body = await running.get("/status")

    assert json.loads(body) == {"path": "/run/ready"}


async def test_metrics_are_prometheus_text(running: Running) -> None:
    running.metrics.check_ready.labels("APP", "file").set(1)
    running.metrics.check_results.labels("APP", "file", "success").inc()
    running.metrics.check_duration.labels("APP", "file").observe(0.002)
    running.metrics.gate_status.labels("example.com/ready").set(1)

    status, content_type, body = await running.get("/metrics")

    assert status == 200
    assert content_type.startswith("text/plain; version=")
    types = {
        line.split()[2]: line.split()[3] for line in body.splitlines() if line.startswith("# TYPE")
    }
    expected = {
        "readiness_gate_check_ready": "gauge",
        "readiness_gate_check_results_total": "counter",
        "readiness_gate_check_duration_seconds": "histogram",
        "readiness_gate_gate_status": "gauge",
        "readiness_gate_gate_transitions_total": "counter",
        "readiness_gate_api_requests_total": "counter",
        "readiness_gate_api_request_duration_seconds": "histogram",
        "readiness_gate_seconds_to_first_ready": "gauge",
    }
    assert {name: types.get(name) for name in expected} == expected
    assert 'readiness_gate_check_ready{check="APP",kind="file"} 1.0' in body
    assert (
        'readiness_gate_check_results_total{check="APP",kind="file",result="success"} 1.0' in body
    )
    assert 'readiness_gate_check_duration_seconds_count{check="APP",kind="file"} 1.0' in body
    assert 'readiness_gate_gate_status{gate="example.com/ready"} 1.0' in body


async def test_an_unknown_path_is_404(running: Running) -> None:
    status, _, _ = await running.get("/nope")

    assert status == 404


async def test_the_server_stops_quickly_and_releases_its_port(running: Running) -> None:
    assert (await running.get("/healthz"))[0] == 200  # a keep-alive connection is open
    port = port_of(running.server)
    _, idle = await asyncio.open_connection("127.0.0.1", port)
    idle.write(b"GET /healthz HTTP/1.1\r\n")  # a request that never ends
    await idle.drain()
    started = time.monotonic()

    await running.server.stop()

    assert time.monotonic() - started < 1.0
    assert await refused(port)
    idle.close()
    await idle.wait_closed()


async def test_stopping_twice_or_before_starting_is_harmless() -> None:
    server = Server(StubView(registry=Metrics().registry), "127.0.0.1", 0)
    await server.stop()
    await server.start()
    port = port_of(server)
    await server.stop()
    await server.stop()

    assert await refused(port)
