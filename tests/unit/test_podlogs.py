"""A log check of a container's output: the real transport and ``PodLogs`` against the fake API
server, which streams, ends streams (the container exited, the kubelet rotated its log), repeats
the lines of a whole ``sinceTime`` second and refuses (403, 400)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.typing import EventDict

from sidecar.api import Credentials, KubePodApi, token_configuration
from sidecar.checks._container_lines import ContainerLines, since_time
from sidecar.checks.log import LogCheck
from sidecar.clock import SystemClock
from sidecar.config import ApiAccess, Identity
from sidecar.metrics import Metrics
from sidecar.model import CheckKind, CheckSpec, LogParams, LogStart, Timing
from sidecar.podlogs import POD_LOGS_RULE, PodLogs
from tests.unit.api_rig import NS, POD, UID, events, eventually
from tests.unit.fake_apiserver import DROP, FakeApiServer, Reply, Route

pytestmark = pytest.mark.usefixtures("_no_proxy", "logs")

READY = "Server startup in"
FAIL = "SEVERE"
START = "Starting Servlet engine"


@pytest.fixture
async def pod_logs(apiserver: FakeApiServer, token_file: Path) -> AsyncIterator[PodLogs]:
    async def configure() -> Credentials:
        return token_configuration(apiserver.url, token_file, ca_cert=None)

    api = KubePodApi(
        ApiAccess(token_dir=token_file.parent),
        Identity(pod_name=POD, namespace=NS, pod_uid=UID),
        Metrics(),
        configure=configure,
        request_timeout=2.0,
    )
    try:
        yield PodLogs(api, NS)
    finally:
        await api.aclose()


def output_spec(*, start: LogStart = LogStart.START, max_age: float | None = None) -> CheckSpec:
    return CheckSpec(
        id="APP",
        kind=CheckKind.LOG,
        gate=None,
        container="app",
        timing=Timing(period=1.0, timeout=1.0),
        params=LogParams(
            path=None,
            output_of="app",
            pattern=re.compile(READY),
            fail_pattern=re.compile(FAIL),
            start_pattern=re.compile(START),
            max_age=max_age,
            start=start,
        ),
    )


@pytest.fixture
async def make_check(pod_logs: PodLogs) -> AsyncIterator[Callable[..., LogCheck]]:
    made: list[LogCheck] = []

    def make(*, start: LogStart = LogStart.START, max_age: float | None = None) -> LogCheck:
        spec = output_spec(start=start, max_age=max_age)
        check = LogCheck(spec, SystemClock(), container_logs=pod_logs)
        made.append(check)
        return check

    yield make
    for check in made:
        await check.aclose()


@pytest.fixture
async def source(pod_logs: PodLogs) -> AsyncIterator[ContainerLines]:
    lines = ContainerLines(
        "app", pod_logs, clock=SystemClock(), label="APP", backoff_base=0.05, backoff_cap=0.2
    )
    try:
        yield lines
    finally:
        await lines.aclose()


async def verdict_becomes(check: LogCheck, ok: bool, detail: str = "") -> str:
    """Probe until the check says ``ok`` (the stream delivers asynchronously); its detail."""
    async with asyncio.timeout(5.0):
        while True:
            result = await check.probe()
            if result.ok is ok and detail in result.detail:
                return result.detail
            await asyncio.sleep(0.02)


async def collect(source: ContainerLines, count: int, seen: list[str]) -> list[str]:
    """Read ``source`` until ``seen`` holds ``count`` lines."""
    async with asyncio.timeout(5.0):
        while len(seen) < count:
            batch = await source.read()
            seen.extend(batch.text.splitlines())
            if len(seen) < count:
                await asyncio.sleep(0.02)
    return seen


def log_queries(server: FakeApiServer) -> list[dict[str, str]]:
    return [dict(r.query) for r in server.of(Route.LOG)]


# --- the request and the verdicts -----------------------------------------------------------


async def test_a_ready_line_on_stdout_makes_the_check_pass(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer
) -> None:
    apiserver.log("app", "INFO Initializing ProtocolHandler")
    check = make_check()
    detail = await verdict_becomes(check, False, "not seen")
    assert detail == f'pattern "{READY}" not seen in the output of container app'
    apiserver.log("app", "INFO Server startup in [812] milliseconds")

    assert await verdict_becomes(check, True) == (
        f'pattern "{READY}" seen in the output of container app'
    )
    (request,) = apiserver.of(Route.LOG)
    assert request.path == f"/api/v1/namespaces/{NS}/pods/{POD}/log"
    assert dict(request.query) == {"container": "app", "follow": "true", "timestamps": "true"}
    assert request.authorization is not None


async def test_a_fail_line_after_the_ready_line_makes_the_check_fail(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer
) -> None:
    apiserver.log("app", "INFO Server startup in [812] milliseconds")
    check = make_check()
    await verdict_becomes(check, True)
    apiserver.log("app", "SEVERE java.lang.OutOfMemoryError: Java heap space")

    assert await verdict_becomes(check, False) == (
        f'fail pattern "{FAIL}" seen in the output of container app'
    )


async def test_a_line_counts_from_the_runtimes_timestamp_not_when_it_was_read(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer
) -> None:
    apiserver.log("app", "INFO Server startup in [812] milliseconds", at=time.time() - 600)
    check = make_check(max_age=60.0)

    assert await verdict_becomes(check, False, "for more than 60s") == (
        f'pattern "{READY}" not seen in the output of container app for more than 60s'
    )


async def test_from_end_ignores_what_the_container_wrote_before(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer
) -> None:
    apiserver.log("app", "INFO Server startup in [812] milliseconds", at=time.time() - 5)
    check = make_check(start=LogStart.END)
    await verdict_becomes(check, False, "not seen")
    await apiserver.wait_for(Route.LOG)
    assert log_queries(apiserver)[0]["tailLines"] == "0"
    apiserver.log("app", "INFO Server startup in [90] milliseconds")

    await verdict_becomes(check, True)


# --- reconnecting ---------------------------------------------------------------------------


async def test_a_stream_that_ends_is_resumed_from_the_last_second_without_repeating_lines(
    source: ContainerLines, apiserver: FakeApiServer
) -> None:
    second = int(time.time()) - 2
    apiserver.log("app", "one", "two", at=second + 0.25)
    seen = await collect(source, 2, [])
    apiserver.end_log_streams()  # the kubelet rotated the log, or restarted
    await apiserver.wait_for(Route.LOG, count=2)
    apiserver.log("app", "three")

    assert await collect(source, 3, seen) == ["one", "two", "three"]
    queries = log_queries(apiserver)
    assert "sinceTime" not in queries[0]
    assert queries[1]["sinceTime"] == since_time(second)  # whole seconds: one and two come again
    assert queries[1]["follow"] == "true"


async def test_lines_of_the_same_second_with_the_same_text_are_kept_as_often_as_written(
    source: ContainerLines, apiserver: FakeApiServer
) -> None:
    second = int(time.time()) - 2
    apiserver.log("app", "tick", "tick", at=second + 0.5)
    seen = await collect(source, 2, [])
    apiserver.end_log_streams()
    await apiserver.wait_for(Route.LOG, count=2)
    apiserver.log("app", "tick", at=second + 0.75)  # the same second, sent after the reconnect

    assert await collect(source, 3, seen) == ["tick", "tick", "tick"]


async def test_rotations_keep_the_ready_verdict_and_lose_no_line(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.log("app", "INFO Server startup in [812] milliseconds")
    check = make_check()
    await verdict_becomes(check, True)
    for rotation in range(3):
        apiserver.end_log_streams()
        await apiserver.wait_for(Route.LOG, count=rotation + 2)
        assert (await check.probe()).ok
    apiserver.log("app", "SEVERE the database is gone")

    await verdict_becomes(check, False, "fail pattern")
    assert not events(logs, "container_log_failed")


async def test_a_silent_stream_is_renewed_by_the_watchdog(
    pod_logs: PodLogs, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.log("app", "hello")
    lines = ContainerLines("app", pod_logs, clock=SystemClock(), silence=0.2, backoff_base=0.05)
    try:
        seen = await collect(lines, 1, [])
        await apiserver.wait_for(Route.LOG, count=3)  # renewed twice: no byte for 0.2 s
        apiserver.log("app", "world")
        assert await collect(lines, 2, seen) == ["hello", "world"]
    finally:
        await lines.aclose()
    assert not events(logs, "container_log_failed")


async def test_a_broken_stream_is_retried_with_backoff_and_logged_once(
    source: ContainerLines, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.log("app", "hello")
    apiserver.fail(DROP, Route.LOG)
    await source.read()  # the first read starts following
    await apiserver.wait_for(Route.LOG, count=3)
    apiserver.fail(None)

    assert await collect(source, 1, []) == ["hello"]
    assert len(events(logs, "container_log_failed")) == 1
    await eventually(lambda: len(events(logs, "container_log_recovered")) == 1)


# --- a new instance of the container --------------------------------------------------------


async def test_a_restarted_container_resets_the_check_and_its_new_output_is_followed(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer
) -> None:
    started = int(time.time())  # the new instance's startedAt (whole seconds)
    old = ("Starting Servlet engine", "INFO Server startup in [812] milliseconds")
    apiserver.log("app", *old, at=started - 2)
    check = make_check()
    await verdict_becomes(check, True)
    apiserver.restart_container("app")  # the old instance's stream ends
    check.forget_before(started)  # the observer saw the new instance on the Pod
    await apiserver.wait_for(Route.LOG, count=2)

    assert await verdict_becomes(check, False) == (
        f'pattern "{READY}" not seen in the output of container app since the application started'
    )
    apiserver.log("app", "Starting Servlet engine", "INFO Server startup in [640] milliseconds")
    await verdict_becomes(check, True)


async def test_a_container_not_started_yet_is_waited_for_quietly(
    source: ContainerLines, apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    batch = await source.read()
    await apiserver.wait_for(Route.LOG, count=2)  # 400 "waiting to start", asked again
    batch = await source.read()
    assert batch.missing is not None
    assert "is waiting to start" in batch.missing
    apiserver.log("app", "up")

    assert await collect(source, 1, []) == ["up"]
    assert not events(logs, "container_log_failed")


# --- permissions ----------------------------------------------------------------------------


async def test_without_get_on_pods_log_the_check_fails_saying_which_rule_to_add(
    make_check: Callable[..., LogCheck], apiserver: FakeApiServer, logs: list[EventDict]
) -> None:
    apiserver.log("app", "INFO Server startup in [812] milliseconds")
    denied = (
        'pods "web-0" is forbidden: User "system:serviceaccount:shop:gate" cannot get '
        'resource "pods/log" in API group "" in the namespace "shop"'
    )
    apiserver.fail(Reply(status=403, message=denied), Route.LOG)
    check = make_check()

    detail = await verdict_becomes(check, False, "forbidden")
    assert detail.startswith("cannot read the output of container app: forbidden (403)")
    assert "get on pods/log" in detail
    await apiserver.wait_for(Route.LOG, count=3)
    await check.probe()
    (logged,) = events(logs, "container_log_failed")
    assert logged["log_level"] == "error"
    assert POD_LOGS_RULE in logged["error"]
    assert denied in logged["error"]
    apiserver.fail(None)  # the Role was bound

    await verdict_becomes(check, True)
    assert len(events(logs, "container_log_recovered")) == 1


async def test_reading_once_gets_the_output_there_is_and_ends(
    pod_logs: PodLogs, apiserver: FakeApiServer
) -> None:
    apiserver.log("app", "Starting Servlet engine", "INFO Server startup in [812] milliseconds")
    lines = ContainerLines("app", pod_logs, clock=SystemClock(), follow=False)
    try:
        batch = await lines.read()
        assert batch.text.splitlines() == [
            "Starting Servlet engine",
            "INFO Server startup in [812] milliseconds",
        ]
        assert not batch.more
        assert (await lines.read()).text == ""
    finally:
        await lines.aclose()
    (request,) = apiserver.of(Route.LOG)
    assert request.query["follow"] == "false"
