"""The whole agent with real checks and real endpoints; the API is a fake ``PodApi``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.api import ApiResponse, LogLines, WatchEvent
from sidecar.config import Settings, load_settings
from sidecar.runtime import Agent

JSON = dict[str, Any]
TYPE = "example.com/ready"
UID = "0c7a5c1e-7d47-4c3b-9d6e-1f3f0e0b7a11"


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until ``condition()`` is true (the real checks and the real clock take their time)."""
    async with asyncio.timeout(within):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


class Endpoints:
    """GETs against a running agent's HTTP endpoints."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http = http
        self._base = base

    async def get(self, path: str) -> tuple[int, str]:
        async with self._http.get(self._base + path) as response:
            return response.status, await response.text()

    async def status_code(self, path: str) -> int:
        return (await self.get(path))[0]

    async def status(self) -> JSON:
        code, body = await self.get("/status")
        assert code == 200
        document: JSON = json.loads(body)
        return document

    def returns(self, path: str, code: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await self.status_code(path) == code

        return check


class Run:
    """An agent running in a task until ``stop()``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.event = asyncio.Event()
        self.task = asyncio.create_task(agent.run(self.event), name="agent-under-test")

    @property
    def port(self) -> int:
        [address] = self.agent.server.addresses
        return int(address.rpartition(":")[2])

    async def started(self) -> str:
        async def listening() -> bool:
            assert not self.task.done(), "the agent ended before it listened"
            return bool(self.agent.server.addresses)

        await eventually(listening)
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> float:
        """Set the stop event; how long ``run()`` took to return."""
        started = time.monotonic()
        self.event.set()
        await asyncio.wait_for(self.task, timeout=10)
        return time.monotonic() - started


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[tuple[Run, Endpoints]]:
    run = Run(agent)
    try:
        base = await run.started()
        async with aiohttp.ClientSession() as http:
            yield run, Endpoints(http, base)
    finally:
        if not run.task.done():
            run.event.set()
            await asyncio.gather(run.task, return_exceptions=True)


@pytest.fixture
async def tcp_port() -> AsyncIterator[int]:
    """A real TCP listener on 127.0.0.1 that accepts and closes connections."""

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def probe_only(tmp_path: Path, tcp_port: int, **extra: str) -> Settings:
    env = {
        "GATE_WRITE": "false",
        "GATE_HTTP_ADDRESS": "127.0.0.1:0",
        "GATE_PERIOD_SECONDS": "0.5",
        "GATE_TIMEOUT_SECONDS": "0.4",
        "CHECK_MARKER_KIND": "file",
        "CHECK_MARKER_PATH": str(tmp_path / "ready"),
        "CHECK_DB_KIND": "tcp",
        "CHECK_DB_ADDRESS": f"127.0.0.1:{tcp_port}",
        **extra,
    }
    return load_settings(env, require_api=True)


# --- probe-only mode -----------------------------------------------------------------------------


async def test_the_gate_opens_when_the_marker_file_appears(tmp_path: Path, tcp_port: int) -> None:
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (_, http):
        assert await http.status_code("/gate") == 503
        await eventually(http.returns("/readyz", 200))
        assert await http.status_code("/gate") == 503

        (tmp_path / "ready").write_text("")

        await eventually(http.returns("/gate", 200))
        code, body = await http.get("/gate")
        assert code == 200
        assert f"file MARKER: {tmp_path / 'ready'} exists" in body
        assert f"tcp DB: connected to 127.0.0.1:{tcp_port}" in body


async def test_readyz_waits_until_every_check_has_run(tmp_path: Path, tcp_port: int) -> None:
    settings = probe_only(tmp_path, tcp_port, CHECK_DB_INITIAL_DELAY_SECONDS="600")
    async with running(Agent(settings)) as (_, http):

        async def marker_ran() -> bool:
            return (await http.status())["checks"]["MARKER"]["last"] is not None

        await eventually(marker_ran)

        assert (await http.status())["checks"]["DB"]["last"] is None
        assert await http.get("/readyz") == (503, "waiting for the first result of every check\n")


async def test_readyz_is_200_once_every_check_has_run(tmp_path: Path, tcp_port: int) -> None:
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (_, http):
        await eventually(http.returns("/readyz", 200))

        assert await http.get("/readyz") == (200, "every check has run\n")
        status = await http.status()
        assert all(check["last"] is not None for check in status["checks"].values())


async def test_status_shows_every_check(tmp_path: Path, tcp_port: int) -> None:
    (tmp_path / "ready").write_text("")
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (_, http):
        await eventually(http.returns("/gate", 200))

        status = await http.status()

    assert status["write"] is False
    assert status["pod"] is None
    assert status["api"] is None
    assert set(status["checks"]) == {"MARKER", "DB"}
    marker, db = status["checks"]["MARKER"], status["checks"]["DB"]
    assert (marker["kind"], marker["state"], marker["gate"]) == ("file", "ready", None)
    assert marker["last"]["ok"] is True
    assert marker["last"]["detail"] == f"{tmp_path / 'ready'} exists"
    assert (db["kind"], db["state"], db["last"]["ok"]) == ("tcp", "ready", True)
    [gate] = status["gates"].values()
    assert gate["desired"]["status"] == "True"
    assert gate["desired"]["reason"] == "ChecksPassed"


async def test_healthz_is_200_while_the_checks_run(tmp_path: Path, tcp_port: int) -> None:
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (_, http):
        await eventually(http.returns("/readyz", 200))

        code, body = await http.get("/healthz")

    assert code == 200
    assert json.loads(body) == {"ok": True, "overdue_checks": [], "stopped_loops": []}


async def test_metrics_count_the_probes(tmp_path: Path, tcp_port: int) -> None:
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (_, http):
        await eventually(http.returns("/readyz", 200))

        _, body = await http.get("/metrics")

    assert 'readiness_gate_check_results_total{check="DB",kind="tcp",result="success"}' in body
    assert 'readiness_gate_check_results_total{check="MARKER",kind="file",result="failure"}' in body


async def test_stopping_ends_run_within_a_second_and_closes_everything(
    tmp_path: Path, tcp_port: int
) -> None:
    async with running(Agent(probe_only(tmp_path, tcp_port))) as (run, http):
        await eventually(http.returns("/readyz", 200))
        port = run.port

        elapsed = await run.stop()

    assert elapsed < 1.0
    assert run.task.result() is None
    assert await refused(port)


async def test_stopping_abandons_a_probe_in_flight(tmp_path: Path, tcp_port: int) -> None:
    pid_file = tmp_path / "slow.pid"
    settings = probe_only(
        tmp_path,
        tcp_port,
        CHECK_SLOW_KIND="exec",
        CHECK_SLOW_COMMAND=f"sh -c 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} "
        "&& exec sleep 30'",
        CHECK_SLOW_TIMEOUT_SECONDS="20",
        CHECK_SLOW_PERIOD_SECONDS="30",
    )
    async with running(Agent(settings)) as (run, _):

        async def command_started() -> bool:
            return pid_file.exists()

        await eventually(command_started)
        pid = int(pid_file.read_text())

        elapsed = await run.stop()

    assert elapsed < 1.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


# --- writing the condition -----------------------------------------------------------------------


class QuietStream:
    """A watch on which nothing ever happens, until it is closed."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    def __aiter__(self) -> QuietStream:
        return self

    async def __anext__(self) -> WatchEvent:
        await self._closed.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed.set()


class FakePodApi:
    """A ``PodApi`` over one Pod that declares the readiness gate ``TYPE``."""

    def __init__(self) -> None:
        self.pod: JSON = {
            "metadata": {"name": "shop-0", "namespace": "shop", "uid": UID},
            "spec": {"readinessGates": [{"conditionType": TYPE}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }
        self.patches: list[JSON] = []
        self.budgets: list[float | None] = []
        self.events: list[JSON] = []
        self.closed = False

    async def get_pod(self) -> ApiResponse:
        return ApiResponse(status=200, body=copy.deepcopy(self.pod))

    async def patch_status(self, patch: JSON, *, budget: float | None = None) -> ApiResponse:
        self.patches.append(patch)
        self.budgets.append(budget)
        conditions: list[JSON] = self.pod["status"]["conditions"]
        for condition in patch["status"]["conditions"]:
            conditions[:] = [c for c in conditions if c["type"] != condition["type"]]
            conditions.append(condition)
        return ApiResponse(status=200, body=copy.deepcopy(self.pod))

    async def watch_pod(
        self, resource_version: str, *, timeout_seconds: int, inactivity: float
    ) -> tuple[ApiResponse, QuietStream]:
        return ApiResponse(status=200), QuietStream()

    async def create_event(self, event: JSON) -> ApiResponse:
        self.events.append(event)
        return ApiResponse(status=201, body=event)

    async def patch_event(self, name: str, patch: JSON) -> ApiResponse:
        return ApiResponse(status=200, body={"metadata": {"name": name}})

    async def read_log(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> tuple[ApiResponse, LogLines | None]:
        return ApiResponse(status=404, message="no logs here"), None

    async def reload_credentials(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True

    def written(self) -> list[tuple[str, str]]:
        """``(status, reason)`` of every condition written, in order."""
        return [
            (c["status"], c["reason"])
            for patch in self.patches
            for c in patch["status"]["conditions"]
        ]


def writing(tmp_path: Path, on_shutdown: str, address: str = "127.0.0.1:0") -> Settings:
    env = {
        "GATE_CONDITION_TYPE": TYPE,
        "GATE_HTTP_ADDRESS": address,
        "GATE_PERIOD_SECONDS": "0.5",
        "GATE_TIMEOUT_SECONDS": "0.4",
        "GATE_ON_SHUTDOWN": on_shutdown,
        "GATE_EVENTS": "false",
        "POD_NAME": "shop-0",
        "POD_NAMESPACE": "shop",
        "POD_UID": UID,
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",  # never used: the test passes its own api
        "KUBERNETES_SERVICE_PORT": "1",
        "CHECK_MARKER_KIND": "file",
        "CHECK_MARKER_PATH": str(tmp_path / "ready"),
    }
    return load_settings(env, require_api=True)


async def written_true(api: FakePodApi) -> bool:
    return ("True", "ChecksPassed") in api.written()


async def test_the_agent_writes_the_condition_through_the_api(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    api = FakePodApi()
    async with running(Agent(writing(tmp_path, "keep"), api=api)) as (_, http):
        await eventually(lambda: written_true(api))
        assert await http.status_code("/readyz") == 200

        status = await http.status()

    assert status["pod"] == "shop/shop-0"
    assert status["api"]["health"] == "ok"
    [gate] = status["gates"].values()
    assert gate["condition_type"] == TYPE
    assert gate["on_server"]["status"] == "True"
    assert api.patches[0]["metadata"] == {"uid": UID}


async def test_shutdown_policy_false_writes_agent_stopped_on_stop(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    api = FakePodApi()
    async with running(Agent(writing(tmp_path, "false"), api=api)) as (run, _):
        await eventually(lambda: written_true(api))

        elapsed = await run.stop()

    assert elapsed < 1.0
    assert api.written()[-1] == ("False", "AgentStopped")
    last = api.patches[-1]
    assert last["metadata"] == {"uid": UID}
    [condition] = last["status"]["conditions"]
    assert condition["type"] == TYPE
    assert "lastTransitionTime" in condition
    assert api.budgets[-1] is not None
    assert api.budgets[-1] <= 1.0  # one short attempt
    assert api.closed


async def test_shutdown_policy_keep_writes_nothing_on_stop(tmp_path: Path) -> None:
    (tmp_path / "ready").write_text("")
    api = FakePodApi()
    async with running(Agent(writing(tmp_path, "keep"), api=api)) as (run, _):
        await eventually(lambda: written_true(api))
        before = list(api.patches)

        elapsed = await run.stop()

    assert elapsed < 1.0
    assert api.patches == before
    assert api.written()[-1] == ("True", "ChecksPassed")
    assert api.closed


async def test_a_port_in_use_fails_run_and_still_closes_everything(
    tmp_path: Path, tcp_port: int
) -> None:
    api = FakePodApi()
    agent = Agent(writing(tmp_path, "false", address=f"127.0.0.1:{tcp_port}"), api=api)

    with pytest.raises(OSError, match="address already in use"):
        await asyncio.wait_for(agent.run(asyncio.Event()), timeout=10)

    assert api.closed
    assert api.patches == []  # nothing was read, so nothing is written on the way out
