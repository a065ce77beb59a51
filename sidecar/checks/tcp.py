"""The ``tcp`` check: connect to a TCP or Unix socket, optionally send bytes and expect a reply.

Without ``expect`` the check succeeds once the connection is open (and ``send``, if any, is
written). With ``expect`` it reads the reply incrementally until the regular expression matches
(success) or the peer closes the connection (failure, showing what was received). The reply is
capped at 64 KiB: a peer that talks more than that without matching fails the check. There is no
read timeout here: the prober bounds the whole probe with the check's timeout by cancelling it, and
the connection is aborted on cancellation.

This covers banner protocols (SMTP greets with ``220 ...``, no ``send``) as well as
request/response ones (Redis: ``send`` ``PING\\r\\n``, ``expect`` ``^\\+PONG``).
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from dataclasses import dataclass

from sidecar.checks.base import timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, TcpParams, bounded

#: The longest reply the check accumulates while waiting for ``expect`` to match.
REPLY_CAP = 64 * 1024
_READ_CHUNK = 16 * 1024
#: The share of the timeout spent waiting for a matching reply before giving up with what came.
REPLY_PATIENCE = 0.8
_SHOWN_LIMIT = 60


def show_bytes(data: bytes, limit: int = _SHOWN_LIMIT) -> str:
    """Render ``data`` as printable ASCII, escaping everything else, cut to ``limit`` characters."""
    out: list[str] = []
    for byte in data:
        char = chr(byte)
        if char in '\\"':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        elif char == "\r":
            out.append("\\r")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        else:
            out.append(f"\\x{byte:02x}")
    return bounded("".join(out), limit)


def _show_pattern(pattern: bytes) -> str:
    """A regular expression's source as written: only non-printable bytes are escaped."""
    out = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in pattern)
    return bounded(out, _SHOWN_LIMIT)


#: Connection errors and how the detail names them; the first match wins.
_CONNECT_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (ConnectionRefusedError, "connection refused by {address}"),
    (FileNotFoundError, "no such socket {address}"),
    (PermissionError, "permission denied connecting to {address}"),
    (TimeoutError, "connection to {address} timed out"),
)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    detail: str


class TcpCheck:
    """Probe a TCP (``host``/``port``) or Unix (``unix_path``) socket."""

    def __init__(self, spec: CheckSpec, clock: Clock) -> None:
        if not isinstance(spec.params, TcpParams):
            raise TypeError(f"{spec.label}: expected TcpParams, got {type(spec.params).__name__}")
        params = spec.params
        if params.unix_path is None and (params.host is None or params.port is None):
            raise ValueError(f"{spec.label}: needs either unix_path or both host and port")
        self.spec = spec
        self._params = params
        self._clock = clock

    def wakeups(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def forget_before(self, started_at: float) -> None:
        return None  # every probe asks the live application

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        outcome = await self._evaluate()
        return timed_result(self._clock, started, outcome.ok, outcome.detail)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        params = self._params
        if params.unix_path is not None:
            return await asyncio.open_unix_connection(params.unix_path)
        return await asyncio.open_connection(params.host, params.port)

    async def _evaluate(self) -> _Outcome:
        address = self._params.address
        # Stop waiting for a matching reply a little before the prober's timeout, so that the
        # result can say what the peer did answer (e.g. Redis "-LOADING") instead of "timed out".
        patience = asyncio.get_running_loop().time() + REPLY_PATIENCE * self.spec.timing.timeout
        try:
            reader, writer = await self._connect()
        except OSError as exc:
            return _Outcome(False, self._connect_error(exc))

        clean = False
        try:
            outcome = await self._converse(reader, writer, address, patience)
            clean = True
            return outcome
        finally:
            await _close(writer, abort=not clean)

    def _connect_error(self, exc: OSError) -> str:
        address = self._params.address
        if isinstance(exc, socket.gaierror):
            return f'cannot resolve host "{self._params.host}": {exc.strerror or exc}'
        for kind, template in _CONNECT_ERRORS:
            if isinstance(exc, kind):
                return template.format(address=address)
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"{address} is unreachable: {exc.strerror}"
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"cannot connect to {address}: {reason}"

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        patience: float,
    ) -> _Outcome:
        send, expect = self._params.send, self._params.expect
        if send is not None:
            try:
                writer.write(send)
                await writer.drain()
            except ConnectionError:
                return _Outcome(False, f"connection closed by {address} while sending")
        if expect is None:
            sent = f" and sent {len(send)} bytes" if send is not None else ""
            return _Outcome(True, f"connected to {address}{sent}")
        try:
            async with asyncio.timeout_at(patience):
                return await _await_reply(reader, expect, address, received := bytearray())
        except TimeoutError:
            got = f'got "{show_bytes(bytes(received))}"' if received else "got nothing"
            return _Outcome(
                False,
                f'no reply matching "{_show_pattern(expect.pattern)}" from {address} yet ({got})',
            )


async def _await_reply(
    reader: asyncio.StreamReader, expect: re.Pattern[bytes], address: str, received: bytearray
) -> _Outcome:
    """Read into ``received`` until ``expect`` matches, the peer closes, or ``REPLY_CAP``."""
    shown = _show_pattern(expect.pattern)
    while True:
        try:
            chunk = await reader.read(min(_READ_CHUNK, REPLY_CAP - len(received)))
        except ConnectionError:
            got = f' (got "{show_bytes(bytes(received))}")' if received else ""
            return _Outcome(False, f"connection reset by {address}{got}")
        received += chunk
        if chunk and expect.search(received):
            return _Outcome(True, f'reply from {address} matches "{shown}"')
        if not chunk:
            got = f'got "{show_bytes(bytes(received))}"' if received else "got nothing"
            return _Outcome(False, f'no reply matching "{shown}" from {address} ({got})')
        if len(received) >= REPLY_CAP:
            return _Outcome(
                False,
                f'no reply matching "{shown}" from {address} within {REPLY_CAP} bytes'
                f' (got "{show_bytes(bytes(received))}")',
            )


async def _close(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    """Close the connection and wait until the transport is gone.

    After an error or a cancellation the connection is aborted (unsent data discarded, no waiting on
    a peer that does not read); otherwise it is closed gracefully.
    """
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
