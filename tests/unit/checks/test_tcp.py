"""The tcp check against real TCP and Unix sockets on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sidecar.checks.base import Check
from sidecar.checks.tcp import REPLY_CAP, TcpCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckResult, CheckSpec, TcpParams, Timing

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Generous: the machine may be busy with other work while these tests run.
SETTLE = 5.0


def open_sockets() -> int:
    """How many sockets this process has open."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += fd.readlink().name.startswith("socket:")
    return count


def make_check(params: TcpParams) -> TcpCheck:
    spec = CheckSpec(id="APP", kind=CheckKind.TCP, gate=None, timing=Timing(), params=params)
    return TcpCheck(spec, SystemClock())


async def wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Read until the client has closed (or reset) its end."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


class Server:
    """A real listening socket whose connection handlers are all finished when it closes."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[object]] = set()
        self.client_gone = asyncio.Event()
        self.server: asyncio.Server | None = None
        self._port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.client_gone.set()

    @property
    def port(self) -> int:
        return self._port

    async def start_tcp(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self._port = self.server.sockets[0].getsockname()[1]

    async def start_unix(self, path: Path) -> None:
        self.server = await asyncio.start_unix_server(self.handle, str(path))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=SETTLE)
            for task in still:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    await server.start_tcp()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def unix_server(handler: Handler, path: Path) -> AsyncIterator[Server]:
    server = Server(handler)
    await server.start_unix(path)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port that is bound but not listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def just_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await wait_for_eof(reader)


async def redis_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    writer.write(b"+PONG\r\n" if line == b"PING\r\n" else b"-ERR unknown command\r\n")
    await writer.drain()
    await wait_for_eof(reader)


def banner(text: bytes, *, then_close: bool) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        if not then_close:
            await wait_for_eof(reader)

    return handler


async def test_tcp_check_succeeds_when_port_accepts_connections() -> None:
    async with tcp_server(just_close) as server:
        check = make_check(TcpParams(host="127.0.0.1", port=server.port))
        before = time.time()
        result = await check.probe()
        await check.aclose()
    assert result.ok
    assert result.detail == f"connected to 127.0.0.1:{server.port}"
    assert result.at >= before
    assert result.duration >= 0.0


async def test_tcp_check_closes_its_connection_after_success() -> None:
    async with tcp_server(just_close) as server:
        result = await make_check(TcpParams(host="127.0.0.1", port=server.port)).probe()
        await asyncio.wait_for(server.client_gone.wait(), SETTLE)
    assert result.ok


async def test_tcp_check_fails_when_connection_is_refused(unused_port: int) -> None:
    result = await make_check(TcpParams(host="127.0.0.1", port=unused_port)).probe()
    assert not result.ok
    assert result.detail == f"connection refused by 127.0.0.1:{unused_port}"


async def test_tcp_check_fails_once_the_server_has_closed_its_port() -> None:
    async with tcp_server(just_close) as server:
        port = server.port
    # Keep the port bound (not listening) so nothing else can take it while we probe.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        result = await make_check(TcpParams(host="127.0.0.1", port=port)).probe()
    assert not result.ok
    assert result.detail == f"connection refused by 127.0.0.1:{port}"


async def test_tcp_check_fails_with_a_clear_detail_when_the_host_does_not_resolve() -> None:
    result = await make_check(TcpParams(host="no-such-host.invalid", port=80)).probe()
    assert not result.ok
    assert result.detail.startswith('cannot resolve host "no-such-host.invalid"')


async def test_tcp_check_connects_to_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    async with unix_server(just_close, path):
        result = await make_check(TcpParams(unix_path=str(path))).probe()
    assert result.ok
    assert result.detail == f"connected to unix:{path}"


async def test_tcp_check_fails_when_the_unix_socket_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing.sock"
    result = await make_check(TcpParams(unix_path=str(path))).probe()
    assert not result.ok
    assert result.detail == f"no such socket unix:{path}"


async def test_tcp_check_fails_when_nobody_listens_on_the_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # a socket file left behind by a process that is not listening
        result = await make_check(TcpParams(unix_path=str(path))).probe()
    assert not result.ok
    assert result.detail == f"connection refused by unix:{path}"


async def test_tcp_check_sends_request_and_matches_expected_reply() -> None:
    async with tcp_server(redis_like) as server:
        params = TcpParams(
            host="127.0.0.1", port=server.port, send=b"PING\r\n", expect=re.compile(rb"^\+PONG")
        )
        result = await make_check(params).probe()
    assert result.ok
    assert result.detail == f'reply from 127.0.0.1:{server.port} matches "^\\+PONG"'


async def test_tcp_check_fails_when_reply_does_not_match_expect() -> None:
    async def wrong_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'-ERR "wrong"\r\n')
        await writer.drain()  # and close: the handler returns

    async with tcp_server(wrong_reply) as server:
        params = TcpParams(
            host="127.0.0.1", port=server.port, send=b"PING\r\n", expect=re.compile(rb"^\+PONG")
        )
        result = await make_check(params).probe()
    assert not result.ok
    assert result.detail == (
        f'no reply matching "^\\+PONG" from 127.0.0.1:{server.port} (got "-ERR \\"wrong\\"\\r\\n")'
    )


async def test_tcp_check_succeeds_without_expect_once_connected_and_sent() -> None:
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
        received.append(bytes(data))

    async with tcp_server(record) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, send=b"hello\n")
        result = await make_check(params).probe()
        await asyncio.wait_for(server.client_gone.wait(), SETTLE)
    assert result.ok
    assert result.detail == f"connected to 127.0.0.1:{server.port} and sent 6 bytes"
    assert received == [b"hello\n"]


async def test_tcp_check_matches_a_banner_without_sending_anything() -> None:
    async with tcp_server(banner(b"220 mail.example ESMTP\r\n", then_close=False)) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        result = await make_check(params).probe()
    assert result.ok
    assert result.detail == f'reply from 127.0.0.1:{server.port} matches "^220"'


async def test_tcp_check_matches_a_banner_that_arrives_in_pieces() -> None:
    async def slow_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in (b"2", b"20 rea", b"dy\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await wait_for_eof(reader)

    async with tcp_server(slow_banner) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220 ready"))
        result = await make_check(params).probe()
    assert result.ok


async def test_tcp_check_fails_when_banner_does_not_match_and_server_hangs_up() -> None:
    async with tcp_server(banner(b"421 busy\r\n", then_close=True)) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        result = await make_check(params).probe()
    assert not result.ok
    assert (
        result.detail
        == f'no reply matching "^220" from 127.0.0.1:{server.port} (got "421 busy\\r\\n")'
    )


async def test_tcp_check_fails_when_server_closes_before_sending_anything() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    async with tcp_server(hang_up) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        result = await make_check(params).probe()
    assert not result.ok
    assert result.detail == f'no reply matching "^220" from 127.0.0.1:{server.port} (got nothing)'


async def test_tcp_check_escapes_and_bounds_binary_replies_in_the_detail() -> None:
    async with tcp_server(banner(bytes(range(256)) * 4, then_close=True)) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        result = await make_check(params).probe()
    assert not result.ok
    assert len(result.detail) <= 200
    assert result.detail.isprintable()
    assert '(got "\\x00\\x01\\x02' in result.detail


async def test_tcp_check_fails_when_reply_exceeds_the_cap_without_matching() -> None:
    async with tcp_server(banner(b"x" * (REPLY_CAP + 4096), then_close=False)) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        async with asyncio.timeout(SETTLE * 2):
            result = await make_check(params).probe()
        await asyncio.wait_for(server.client_gone.wait(), SETTLE)
    assert not result.ok
    assert f"within {REPLY_CAP} bytes" in result.detail
    assert len(result.detail) <= 200


async def test_tcp_check_is_cancelled_by_timeout_on_a_server_that_never_replies() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wait_for_eof(reader)

    async with tcp_server(silent) as server:
        params = TcpParams(
            host="127.0.0.1", port=server.port, send=b"PING\r\n", expect=re.compile(rb"\+PONG")
        )
        check = make_check(params)
        sockets_before = open_sockets()
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # the prober's timeout comes before the check's patience
            async with asyncio.timeout(0.5):
                await check.probe()
        elapsed = time.monotonic() - started
        # The client end is closed: the server sees EOF (or a reset) promptly...
        await asyncio.wait_for(server.client_gone.wait(), SETTLE)
        # ...and neither end of the connection is left open in this process.
        sockets_after = open_sockets()
        await check.aclose()
    assert 0.5 <= elapsed < 0.5 + SETTLE
    assert sockets_after == sockets_before


async def test_tcp_check_reports_the_reply_of_a_peer_that_answers_wrongly_and_stays_connected() -> (
    None
):
    async def loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
        await writer.drain()
        await wait_for_eof(reader)

    async with tcp_server(loading) as server:
        params = TcpParams(
            host="127.0.0.1", port=server.port, send=b"PING\r\n", expect=re.compile(rb"^\+PONG")
        )
        started = time.monotonic()
        result = await make_check(params).probe()  # no outer timeout: the check gives up itself
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.detail.startswith(
        f'no reply matching "^\\+PONG" from 127.0.0.1:{server.port} yet'
    )
    assert 'got "-LOADING Redis is loading' in result.detail
    assert 0.8 <= elapsed < 0.8 + SETTLE


async def test_tcp_check_detail_is_the_same_for_the_same_evidence() -> None:
    async with tcp_server(banner(b"421 busy\r\n", then_close=True)) as server:
        params = TcpParams(host="127.0.0.1", port=server.port, expect=re.compile(rb"^220"))
        check = make_check(params)
        results: list[CheckResult] = [await check.probe() for _ in range(3)]
    assert all(not r.ok for r in results)
    assert len({r.detail for r in results}) == 1
    assert results[1].same_evidence(results[0])


async def test_tcp_check_has_no_wakeups() -> None:
    check: Check = make_check(TcpParams(host="127.0.0.1", port=1))
    assert check.wakeups() is None


def test_tcp_check_rejects_an_address_without_a_port() -> None:
    with pytest.raises(ValueError, match="unix_path or both host and port"):
        make_check(TcpParams(host="127.0.0.1"))
