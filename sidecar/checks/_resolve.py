"""Name lookups for the tcp and http checks, on the check's own thread (see ``_runner``).

``asyncio.open_connection`` and aiohttp resolve host names with ``getaddrinfo`` in the event loop's
default executor: with a name server that never answers, a few probes fill that shared executor,
the other checks' file reads queue behind them, and the agent cannot exit before the lookups give
up. Here a lookup runs on the check's :class:`~sidecar.checks._runner.Runner`, at most one per
name at a time: a probe cancelled by its timeout leaves the lookup running, and the next probe
waits for that same lookup instead of starting another. There is no cache: every probe that
finds no lookup in flight resolves afresh, as a kubelet probe does.

A numeric address needs no lookup and never touches a thread.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from sidecar.checks._runner import Runner

#: ``(family, type, proto, canonname, sockaddr)``, as ``socket.getaddrinfo`` returns them.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
_Key = tuple[str, int, int, int]


def is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _getaddrinfo(host: str, port: int, family: int, flags: int) -> list[AddrInfo]:
    return [
        (info[0], info[1], info[2], info[3], tuple(info[4]))
        for info in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    ]


class Lookups:
    """``getaddrinfo`` for one check: on its runner, one lookup per name at a time."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._in_flight: dict[_Key, asyncio.Future[list[AddrInfo]]] = {}

    async def getaddrinfo(
        self, host: str, port: int, *, family: int = 0, flags: int = 0
    ) -> list[AddrInfo]:
        """Stream-socket addresses for ``host``; raises ``socket.gaierror`` like the original."""
        call = functools.partial(_getaddrinfo, host, port, family, flags)
        if is_numeric(host):
            return call()  # no name service involved: nothing can block
        key = (host, port, family, flags)
        future = self._in_flight.get(key)
        if future is None:
            future = self._runner.submit(call)
            self._in_flight[key] = future
            future.add_done_callback(self._forget(key))
        return await asyncio.shield(future)

    def _forget(self, key: _Key) -> Callable[[asyncio.Future[list[AddrInfo]]], None]:
        def forget(future: asyncio.Future[list[AddrInfo]]) -> None:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]

        return forget

    async def getnameinfo(self, address: tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        """``socket.getnameinfo`` on the runner (numeric flags: it does not ask a name server)."""
        return await self._runner.run(functools.partial(socket.getnameinfo, address, flags))


async def open_stream(
    lookups: Lookups, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port`` (each address in turn) without the loop's default executor.

    Raises the first connection error when every address fails, ``socket.gaierror`` when the
    name does not resolve.
    """
    loop = asyncio.get_running_loop()
    first_error: OSError | None = None
    for family, kind, proto, _, address in await lookups.getaddrinfo(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)  # a numeric address: resolved in the loop
        except OSError as exc:
            sock.close()
            first_error = first_error or exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
    if first_error is None:
        raise OSError(f"no address for {host}")
    raise first_error
