"""The http check against a real aiohttp server (and raw sockets) on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from sidecar import __version__
from sidecar.checks.base import Check
from sidecar.checks.http import BODY_CAP, HttpCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckSpec, HttpParams, Timing

# Generous: the machine may be busy with other work while these tests run.
SETTLE = 5.0


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="status page")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="database: up\nstatus: ready\n")


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/status/503"})


async def user_agent(request: web.Request) -> web.Response:
    return web.Response(text=request.headers.get("User-Agent", ""))


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * BODY_CAP + b"READY")


async def binary(request: web.Request) -> web.Response:
    return web.Response(body=b"\xff\xfe\x00status ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ready", ready)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/ua", user_agent)
    app.router.add_get("/big", big)
    app.router.add_get("/binary", binary)
    return app


@contextlib.asynccontextmanager
async def serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port: int = runner.addresses[0][1]
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with serve() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def checks() -> AsyncIterator[list[HttpCheck]]:
    """Checks made by a test; all closed after it."""
    made: list[HttpCheck] = []
    yield made
    for check in made:
        await check.aclose()


def make_check(checks: list[HttpCheck], url: str, **params: object) -> HttpCheck:
    spec = CheckSpec(
        id="APP",
        kind=CheckKind.HTTP,
        gate=None,
        timing=Timing(),
        params=HttpParams(url=url, **params),  # type: ignore[arg-type]
    )
    check = HttpCheck(spec, SystemClock())
    checks.append(check)
    return check


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port that is bound but not listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate that no client would trust."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=untrusted",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_http_check_succeeds_when_status_is_in_range(
    base_url: str, checks: list[HttpCheck]
) -> None:
    before = time.time()
    result = await make_check(checks, f"{base_url}/health").probe()
    assert result.ok
    assert result.detail == f"GET {base_url}/health returned 200"
    assert result.at >= before


async def test_http_check_fails_when_status_is_out_of_range(
    base_url: str, checks: list[HttpCheck]
) -> None:
    result = await make_check(checks, f"{base_url}/status/503").probe()
    assert not result.ok
    assert result.detail == f"GET {base_url}/status/503 returned 503 (expected 200-399)"


async def test_http_check_honours_a_custom_status_range(
    base_url: str, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"{base_url}/status/404", status_min=404, status_max=404)
    assert (await check.probe()).ok
    check = make_check(checks, f"{base_url}/health", status_min=204, status_max=204)
    result = await check.probe()
    assert not result.ok
    assert result.detail == f"GET {base_url}/health returned 200 (expected 204-204)"


async def test_http_check_judges_a_redirect_by_its_own_status_without_following_it(
    base_url: str, checks: list[HttpCheck]
) -> None:
    # The redirect points to a 503: following it would fail the default range.
    result = await make_check(checks, f"{base_url}/redirect").probe()
    assert result.ok
    assert result.detail == f"GET {base_url}/redirect returned 302"
    strict = make_check(checks, f"{base_url}/redirect", status_max=299)
    result = await strict.probe()
    assert not result.ok
    assert result.detail == f"GET {base_url}/redirect returned 302 (expected 200-299)"


async def test_http_check_succeeds_when_body_matches(
    base_url: str, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"{base_url}/ready", body=re.compile(r"^status: ready$", re.M))
    result = await check.probe()
    assert result.ok
    assert result.detail == f'GET {base_url}/ready returned 200, body matches "^status: ready$"'


async def test_http_check_fails_when_body_does_not_match(
    base_url: str, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"{base_url}/health", body=re.compile("ready"))
    result = await check.probe()
    assert not result.ok
    assert result.detail == f'body of GET {base_url}/health does not match "ready"'


async def test_http_check_only_matches_the_first_64_kib_of_the_body(
    base_url: str, checks: list[HttpCheck]
) -> None:
    result = await make_check(checks, f"{base_url}/big", body=re.compile("READY")).probe()
    assert not result.ok
    assert result.detail == f'body of GET {base_url}/big does not match "READY"'


async def test_http_check_matches_a_body_that_is_not_valid_utf8(
    base_url: str, checks: list[HttpCheck]
) -> None:
    result = await make_check(checks, f"{base_url}/binary", body=re.compile("status ok")).probe()
    assert result.ok


async def test_http_check_sends_its_user_agent(base_url: str, checks: list[HttpCheck]) -> None:
    expected = re.escape(f"readiness-gate-sidecar/{__version__}")
    result = await make_check(checks, f"{base_url}/ua", body=re.compile(f"^{expected}$")).probe()
    assert result.ok, result.detail


async def test_http_check_reuses_its_session_across_probes(
    base_url: str, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"{base_url}/health")
    results = [await check.probe() for _ in range(3)]
    assert all(r.ok for r in results)
    assert len({r.detail for r in results}) == 1


async def test_http_check_can_probe_again_after_aclose(
    base_url: str, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"{base_url}/health")
    assert (await check.probe()).ok
    await check.aclose()
    assert (await check.probe()).ok


async def test_http_check_aclose_without_any_probe_is_harmless(checks: list[HttpCheck]) -> None:
    check = make_check(checks, "http://127.0.0.1:1/")
    await check.aclose()
    await check.aclose()


async def test_http_check_fails_when_connection_is_refused(
    unused_port: int, checks: list[HttpCheck]
) -> None:
    url = f"http://127.0.0.1:{unused_port}/health"
    result = await make_check(checks, url).probe()
    assert not result.ok
    assert result.detail == f"GET {url} failed: connection refused"


async def test_http_check_fails_when_the_host_does_not_resolve(checks: list[HttpCheck]) -> None:
    url = "http://no-such-host.invalid/health"
    result = await make_check(checks, url).probe()
    assert not result.ok
    assert result.detail.startswith(f"GET {url} failed: cannot resolve host no-such-host.invalid")


async def test_http_check_fails_when_server_hangs_up_without_replying(
    checks: list[HttpCheck],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"http://127.0.0.1:{port}/"
        result = await make_check(checks, url).probe()
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert (
        result.detail == f"GET {url} failed: server closed the connection without a complete reply"
    )


async def test_http_check_fails_on_a_reply_that_is_not_http(checks: list[HttpCheck]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await make_check(checks, f"http://127.0.0.1:{port}/").probe()
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert (
        result.detail == f"GET http://127.0.0.1:{port}/ failed: invalid HTTP reply: Bad status line"
    )


async def test_http_check_is_cancelled_by_timeout_on_a_server_that_never_answers(
    checks: list[HttpCheck],
) -> None:
    client_gone = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        client_gone.set()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        check = make_check(checks, f"http://127.0.0.1:{port}/health")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await check.probe()
        elapsed = time.monotonic() - started
        await asyncio.wait_for(client_gone.wait(), SETTLE)  # the connection was closed
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), SETTLE)
    assert 1.0 <= elapsed < 1.0 + SETTLE


async def test_http_check_does_not_verify_tls_certificates(
    self_signed: ssl.SSLContext, checks: list[HttpCheck]
) -> None:
    async with serve(self_signed) as port:
        result = await make_check(checks, f"https://127.0.0.1:{port}/health").probe()
    assert result.ok, result.detail
    assert result.detail == f"GET https://127.0.0.1:{port}/health returned 200"


async def test_http_check_ignores_proxies_from_the_environment(
    base_url: str, unused_port: int, checks: list[HttpCheck], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{unused_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result = await make_check(checks, f"{base_url}/health").probe()
    assert result.ok, result.detail


async def test_http_check_hides_credentials_in_the_detail(
    base_url: str, checks: list[HttpCheck]
) -> None:
    url = base_url.replace("http://", "http://user:secret@") + "/status/500"
    result = await make_check(checks, url).probe()
    assert not result.ok
    assert "secret" not in result.detail
    assert result.detail == f"GET {base_url}/status/500 returned 500 (expected 200-399)"


async def test_http_check_detail_is_the_same_for_the_same_evidence(
    unused_port: int, checks: list[HttpCheck]
) -> None:
    check = make_check(checks, f"http://127.0.0.1:{unused_port}/health")
    results = [await check.probe() for _ in range(3)]
    assert len({(r.ok, r.detail) for r in results}) == 1
    assert results[2].same_evidence(results[0])


def test_http_check_has_no_wakeups() -> None:
    spec = CheckSpec(
        id="APP",
        kind=CheckKind.HTTP,
        gate=None,
        timing=Timing(),
        params=HttpParams(url="http://127.0.0.1/"),
    )
    check: Check = HttpCheck(spec, SystemClock())
    assert check.wakeups() is None
