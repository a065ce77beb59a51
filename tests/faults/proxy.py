"""A scripted HTTPS fault proxy in front of the real kube-apiserver.

The agent is pointed at it (``KUBERNETES_SERVICE_PORT`` = the proxy's port) and verifies it with
the cluster CA like the real API server: the proxy serves a certificate issued by the harness PKI
for ``IP:127.0.0.1``. Every request is forwarded to ``https://127.0.0.1:6443`` with the agent's
own ``Authorization`` header (so RBAC and the admission policy still judge the agent's token),
unless a rule says otherwise:

- :meth:`FaultProxy.fail` answers matching requests with a status (429 with ``Retry-After``, 500,
  503 ...) and a Kubernetes ``Status`` body, for some seconds or some number of requests;
- :meth:`FaultProxy.hold` keeps matching requests in flight, unanswered, until :meth:`clear`
  (a write the API server never answers).

Every request is recorded (:meth:`FaultProxy.seen`) with its arrival time, so tests can count
requests per time window. The proxy runs its own event loop in a thread: the tests that drive it
are synchronous, the agent is a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.harness.cluster import SERVER
from tests.harness.pki import ClientCert

#: Request headers that belong to the hop, not to the request.
_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """One request the proxy received."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    status: int  # what the agent got: the fault, the API server's answer; 0: held, no answer
    faulted: bool


@dataclass(slots=True, kw_only=True)
class _Rule:
    status: int | None  # None: hold the request
    methods: frozenset[str]
    path_suffix: str
    until: float | None
    remaining: int | None
    retry_after: str | None

    def matches(self, method: str, path: str, now: float) -> bool:
        if self.until is not None and now >= self.until:
            return False
        if self.remaining is not None and self.remaining <= 0:
            return False
        return method in self.methods and path.endswith(self.path_suffix)


class FaultProxy:
    """``with FaultProxy(cert, ca_file) as proxy:`` listens on 127.0.0.1:``proxy.port``."""

    def __init__(self, cert: ClientCert, ca_file: Path, upstream: str = SERVER) -> None:
        self._cert = cert
        self._ca_file = ca_file
        self._upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._seen: list[Seen] = []
        self._held = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        self._release: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._streams: set[aiohttp.ClientResponse] = set()  # watches being passed on
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    def __exit__(self, *_exc: object) -> None:
        self.clear()
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, int], timeout: float = 30) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> int:
        self._release = asyncio.Event()
        client_tls = ssl.create_default_context(cafile=str(self._ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_tls),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=30),
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(str(self._cert.cert), str(self._cert.key))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        port: int = self._runner.addresses[0][1]
        return port

    async def _stop(self) -> int:
        for upstream in list(self._streams):
            upstream.close()  # ends the watches' handlers, so the server can stop at once
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
            # The connections' TLS close completes after close() returns (aiohttp's docs on
            # graceful shutdown): let it finish before this loop is closed for good.
            await asyncio.sleep(0.25)
        return 0

    # --- scripting (from the test's thread) -----------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        methods: Iterable[str] = ("PATCH",),
        path_suffix: str = "",
        seconds: float | None = None,
        count: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer matching requests with ``status`` for ``seconds`` or ``count`` requests."""
        self._add(status, methods, path_suffix, seconds, count, retry_after)

    def hold(self, *, methods: Iterable[str] = ("PATCH",), path_suffix: str = "") -> None:
        """Keep matching requests unanswered until :meth:`clear`."""
        self._add(None, methods, path_suffix, None, None, None)

    def clear(self) -> None:
        """Forward everything again; held requests are answered 504."""
        with self._lock:
            self._rules.clear()
        if self._release is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._release.set)

    def _add(
        self,
        status: int | None,
        methods: Iterable[str],
        path_suffix: str,
        seconds: float | None,
        count: int | None,
        retry_after: float | None,
    ) -> None:
        rule = _Rule(
            status=status,
            methods=frozenset(m.upper() for m in methods),
            path_suffix=path_suffix,
            until=None if seconds is None else time.monotonic() + seconds,
            remaining=count,
            retry_after=None if retry_after is None else f"{retry_after:g}",
        )
        with self._lock:
            self._rules.append(rule)

    # --- observing ------------------------------------------------------------------------------

    def seen(self, method: str | None = None, path_suffix: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method) and s.path.endswith(path_suffix)
            ]

    @property
    def held(self) -> int:
        """How many requests are being held right now."""
        with self._lock:
            return self._held

    # --- the proxy ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        method, path = request.method, request.path
        with self._lock:
            rule = next((r for r in self._rules if r.matches(method, path, now)), None)
            if rule is not None and rule.remaining is not None:
                rule.remaining -= 1
        body = await request.read()
        if rule is not None and rule.status is None:
            return await self._held_request(now, method, path)
        if rule is not None and rule.status is not None:
            self._record(now, method, path, rule.status, faulted=True)
            return _status_response(rule.status, rule.retry_after)
        if request.query.get("watch", "").lower() in ("true", "1"):  # kubernetes-asyncio: True
            return await self._stream(request, now)
        status, payload, content_type = await self._forward(request, body)
        self._record(now, method, path, status, faulted=False)
        response = web.Response(status=status, body=payload)
        if content_type:
            response.headers["Content-Type"] = content_type
        return response

    async def _held_request(self, now: float, method: str, path: str) -> web.Response:
        assert self._release is not None
        with self._lock:
            self._held += 1
        self._record(now, method, path, 0, faulted=True)
        try:
            await self._release.wait()
        finally:
            with self._lock:
                self._held -= 1
        return _status_response(504, None)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str | None]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with self._session.request(
                request.method,
                self._upstream + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.read()
                return upstream.status, payload, upstream.headers.get("Content-Type")
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            message = f"fault proxy: upstream unreachable: {type(err).__name__}"
            return 502, _status_body(502, message), "application/json"

    async def _stream(self, request: web.Request, now: float) -> web.StreamResponse:
        """A watch: the API server's answer passed on as it comes, for as long as it lasts."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        forever = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self._session.get(
                self._upstream + request.path_qs, headers=headers, timeout=forever
            ) as upstream:
                self._record(now, request.method, request.path, upstream.status, faulted=False)
                response = web.StreamResponse(status=upstream.status)
                response.content_type = upstream.content_type
                await response.prepare(request)
                self._streams.add(upstream)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                except (aiohttp.ClientError, OSError):
                    pass  # the API server (or the proxy's stop) ended the watch
                finally:
                    self._streams.discard(upstream)
                return response
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            message = f"fault proxy: upstream unreachable: {type(err).__name__}"
            self._record(now, request.method, request.path, 502, faulted=False)
            return web.Response(status=502, body=_status_body(502, message))

    def _record(self, at: float, method: str, path: str, status: int, *, faulted: bool) -> None:
        with self._lock:
            self._seen.append(Seen(at=at, method=method, path=path, status=status, faulted=faulted))


_REASONS = {
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _status_body(status: int, message: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": _REASONS.get(status, "Unknown"),
            "code": status,
        }
    ).encode()


def _status_response(status: int, retry_after: str | None) -> web.Response:
    response = web.Response(
        status=status,
        body=_status_body(status, f"fault proxy: injected {status}"),
        content_type="application/json",
    )
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response
