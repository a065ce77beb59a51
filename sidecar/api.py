"""API transport: the only module that uses kubernetes_asyncio.

Five requests on the agent's own Pod — GET it, WATCH it (``fieldSelector=metadata.name=<pod>``),
PATCH its status (strategic merge), POST/PATCH Events, GET a container's log (``follow``) — each
bounded in time (kubernetes_asyncio has no timeout by default), none raising for HTTP or transport
errors: every outcome is an :class:`ApiResponse` (status 0 = no HTTP answer). A watch stream
yields raw JSON events and a log stream timestamped lines; both are guarded by an inactivity
watchdog: a stream that stays silent longer than it may (a silently stuck watch,
kubernetes-asyncio#360; a silent container) ends with :class:`StreamBrokenError`
(:class:`StreamIdleError` for a log stream's silence).

The ServiceAccount token is re-read whenever its file changes (the kubelet rotates it; checked on
every request) and after a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from sidecar import __version__
from sidecar.config import ApiAccess, Identity
from sidecar.metrics import Metrics

JSON = dict[str, Any]

USER_AGENT = f"readiness-gate-sidecar/{__version__}"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
REQUEST_TIMEOUT = 10.0
#: A watch event (a Pod as JSON) longer than this breaks the stream instead of filling memory.
WATCH_LINE_LIMIT = 8 * 1024 * 1024
#: A container's log line keeps this many bytes (after its timestamp), like a followed file's.
LOG_LINE_LIMIT = 64 * 1024
#: The timestamp the kubelet puts before each line (RFC 3339 with nanoseconds) and a space.
_STAMP_LIMIT = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiResponse:
    status: int  # 0: no HTTP response (connection error, timeout)
    body: JSON | None = None
    message: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """One line of a watch: ``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK`` or ``ERROR``."""

    type: str
    object: JSON

    @property
    def resource_version(self) -> str | None:
        version = (self.object.get("metadata") or {}).get("resourceVersion")
        return version if isinstance(version, str) and version else None

    @property
    def code(self) -> int | None:
        """The HTTP code an ``ERROR`` event carries (410: the resource version is too old)."""
        code = self.object.get("code")
        return code if self.type == "ERROR" and isinstance(code, int) else None


class StreamBrokenError(Exception):
    """A stream ended abnormally: transport error, inactivity, or an unreadable line.

    ``stuck``: it went silent (the inactivity watchdog) rather than breaking."""

    def __init__(self, message: str, *, stuck: bool = False) -> None:
        super().__init__(message)
        self.stuck = stuck


class StreamIdleError(StreamBrokenError):
    """A log stream was silent for longer than allowed (normal for a quiet container)."""


@dataclass(frozen=True, slots=True)
class TimedLine:
    """One line of a container's log with ``timestamps=true``: the kubelet's RFC 3339 timestamp
    and the text (decoded, invalid UTF-8 replaced, at most :data:`LOG_LINE_LIMIT` bytes)."""

    stamp: str
    text: str


class LogLines(Protocol):
    def __aiter__(self) -> AsyncGenerator[TimedLine, None]: ...

    def close(self) -> None: ...


class WatchStream(Protocol):
    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def aclose(self) -> None: ...


class PodApi(Protocol):
    async def get_pod(self) -> ApiResponse: ...

    async def watch_pod(
        self, resource_version: str, *, timeout_seconds: int, inactivity: float
    ) -> tuple[ApiResponse, WatchStream | None]:
        """Open a watch of our Pod from ``resource_version`` (bookmarks on). The stream is
        returned with a 2xx response, else ``None``; it ends when the server closes it after
        ``timeout_seconds`` and raises :class:`StreamBrokenError` after ``inactivity`` seconds
        without a line."""
        ...

    async def patch_status(self, patch: JSON, *, budget: float | None = None) -> ApiResponse:
        """``budget``: the request's timeout; None is the API's usual request timeout."""
        ...

    async def create_event(self, event: JSON) -> ApiResponse: ...

    async def patch_event(self, name: str, patch: JSON) -> ApiResponse: ...

    async def read_log(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> tuple[ApiResponse, LogLines | None]:
        """Open ``GET pods/<our pod>/log?container=&timestamps=true`` (``sinceTime``,
        ``tailLines``, ``follow``). The lines are returned with a 2xx response, else ``None``;
        they end when the server ends the stream and raise :class:`StreamIdleError` after
        ``inactivity`` seconds without a byte."""
        ...

    async def reload_credentials(self) -> None: ...

    async def aclose(self) -> None: ...


class TokenFile:
    """A projected ServiceAccount token: re-read whenever the file changes, or when asked (401)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def current(self) -> str:
        try:
            stat = self.path.stat()  # follows the kubelet's ..data symlink swap
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token = self.path.read_text().strip()
                self._stamp = stamp
        except OSError as err:
            raise k8s_config.ConfigException(
                f"cannot read the ServiceAccount token {self.path}: {err.strerror or err}"
            ) from None
        return self._token

    def invalidate(self) -> None:
        self._stamp = None


Credentials = tuple[k8s.Configuration, Callable[[], None]]
"""A client configuration plus a function that forces fresh credentials (after a 401)."""

ConfigurationFactory = Callable[[], Awaitable[Credentials]]


async def build_configuration(access: ApiAccess) -> Credentials:
    """Production access: a kubeconfig if given, else in-cluster https with ca.crt and the token."""
    if access.kubeconfig is not None:
        configuration = k8s.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(access.kubeconfig), client_configuration=configuration
        )
        return configuration, lambda: None
    host = access.service_host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return token_configuration(
        f"https://{host}:{access.service_port or 443}",
        access.token_dir / "token",
        ca_cert=access.token_dir / "ca.crt",
    )


def token_configuration(host: str, token_path: Path, *, ca_cert: Path | None) -> Credentials:
    """Bearer-token access to ``host``: the token file is re-read whenever it changes (checked on
    every request) and after the returned invalidate function was called."""
    configuration = k8s.Configuration()
    configuration.host = host
    if ca_cert is not None:
        configuration.ssl_ca_cert = str(ca_cert)
    token = TokenFile(token_path)
    configuration.api_key_prefix["BearerToken"] = "Bearer"

    def refresh(cfg: k8s.Configuration) -> None:
        cfg.api_key["BearerToken"] = token.current()

    configuration.refresh_api_key_hook = refresh
    refresh(configuration)  # the client consults the hook only once a token is present
    return configuration, token.invalidate


Request = Callable[[Any, Any], Awaitable[aiohttp.ClientResponse]]


class KubePodApi:
    """PodApi over kubernetes_asyncio. Every call has a timeout; nothing raises for HTTP errors.

    ``configure`` replaces how the client configuration is built (tests point it at a local
    plain-HTTP server); by default it is :func:`build_configuration` of ``access``.
    """

    def __init__(
        self,
        access: ApiAccess,
        identity: Identity,
        metrics: Metrics,
        *,
        configure: ConfigurationFactory | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._access = access
        self._identity = identity
        self._metrics = metrics
        self._configure = configure or (lambda: build_configuration(access))
        self._timeout = request_timeout
        self._client: k8s.ApiClient | None = None
        self._core: Any = None
        self._invalidate: Callable[[], None] = lambda: None

    async def _api(self) -> Any:
        if self._core is None:
            configuration, self._invalidate = await self._configure()
            self._client = k8s.ApiClient(configuration)
            self._client.user_agent = USER_AGENT
            self._core = k8s.CoreV1Api(self._client)
        return self._core

    async def get_pod(self) -> ApiResponse:
        ident = self._identity
        return await self._call(
            "get",
            lambda api, t: api.read_namespaced_pod(
                ident.pod_name, ident.namespace, _preload_content=False, _request_timeout=t
            ),
        )

    async def watch_pod(
        self, resource_version: str, *, timeout_seconds: int, inactivity: float
    ) -> tuple[ApiResponse, WatchStream | None]:
        ident = self._identity
        stream_timeout = self._stream_timeout()
        opened: list[aiohttp.ClientResponse] = []

        def request(api: Any, _: Any) -> Awaitable[aiohttp.ClientResponse]:
            opening: Awaitable[aiohttp.ClientResponse] = api.list_namespaced_pod(
                ident.namespace,
                field_selector=f"metadata.name={ident.pod_name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                watch=True,
                _preload_content=False,
                _request_timeout=stream_timeout,
            )
            return opening

        response = await self._call("watch", request, keep_open=opened)
        if not response.ok or not opened:
            return response, None
        return response, _ResponseStream(opened[0], inactivity)

    async def patch_status(self, patch: JSON, *, budget: float | None = None) -> ApiResponse:
        ident = self._identity
        return await self._call(
            "patch",
            lambda api, t: api.patch_namespaced_pod_status(
                ident.pod_name,
                ident.namespace,
                patch,
                _content_type=STRATEGIC_MERGE,
                _preload_content=False,
                _request_timeout=t,
            ),
            budget=budget,
        )

    async def create_event(self, event: JSON) -> ApiResponse:
        namespace = self._identity.namespace
        return await self._call(
            "create",
            lambda api, t: api.create_namespaced_event(
                namespace, event, _preload_content=False, _request_timeout=t
            ),
        )

    async def patch_event(self, name: str, patch: JSON) -> ApiResponse:
        namespace = self._identity.namespace
        return await self._call(
            "patch",
            lambda api, t: api.patch_namespaced_event(
                name,
                namespace,
                patch,
                _content_type=STRATEGIC_MERGE,
                _preload_content=False,
                _request_timeout=t,
            ),
        )

    async def read_log(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> tuple[ApiResponse, LogLines | None]:
        ident = self._identity
        query: list[tuple[str, str]] = [
            ("container", container),
            ("follow", "true" if follow else "false"),
            ("timestamps", "true"),
        ]
        if since is not None:
            query.append(("sinceTime", since))
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        opened: list[aiohttp.ClientResponse] = []

        def request(api: Any, _: Any) -> Awaitable[aiohttp.ClientResponse]:
            # read_namespaced_pod_log has no since_time (the API's OpenAPI document leaves
            # sinceTime out): the same request through the client's own call_api, with its
            # authentication (the token hook) and the same path.
            opening: Awaitable[aiohttp.ClientResponse] = api.api_client.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                "GET",
                path_params={"namespace": ident.namespace, "name": ident.pod_name},
                query_params=query,
                header_params={"Accept": "application/json, */*"},  # as kubectl: 406 for text/plain
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self._stream_timeout(),
            )
            return opening

        response = await self._call("log", request, keep_open=opened)
        if not response.ok or not opened:
            return response, None
        return response, _LogStream(opened[0], inactivity)

    def _stream_timeout(self) -> aiohttp.ClientTimeout:
        """Only connecting and the response headers are bounded by the request timeout (see
        ``_call``); the body is read under the stream's own inactivity watchdog."""
        return aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_connect=self._timeout)

    async def reload_credentials(self) -> None:
        self._invalidate()
        if self._access.kubeconfig is not None:
            await self.aclose()  # re-read the kubeconfig on next use

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = None
        self._core = None

    async def _call(
        self,
        verb: str,
        request: Request,
        *,
        budget: float | None = None,
        keep_open: list[aiohttp.ClientResponse] | None = None,
    ) -> ApiResponse:
        """Send ``request``; read its whole body, or, with ``keep_open``, only a 2xx's headers
        (the open response is appended to ``keep_open``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget = self._timeout if budget is None else budget
        try:
            async with asyncio.timeout(budget):
                api = await self._api()
                response = await request(api, budget)
                if keep_open is not None and 200 <= response.status < 300:
                    keep_open.append(response)
                    raw = b""
                else:
                    try:
                        raw = await response.read()
                    finally:
                        response.release()
            result = _response(response.status, raw, response.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError, TimeoutError, k8s.ApiException) as err:
            result = ApiResponse(status=0, message=_describe_transport_error(err, budget))
        except k8s_config.ConfigException as err:
            result = ApiResponse(status=0, message=f"cannot load API credentials: {err}")
        self._metrics.api_requests.labels(verb, str(result.status)).inc()
        self._metrics.api_latency.labels(verb).observe(loop.time() - started)
        return result


class _ResponseStream:
    """The lines of a watch response as :class:`WatchEvent`s, under an inactivity watchdog."""

    def __init__(self, response: aiohttp.ClientResponse, inactivity: float) -> None:
        self._response = response
        self._inactivity = inactivity

    async def __aiter__(self) -> AsyncIterator[WatchEvent]:
        buffer = bytearray()
        content = self._response.content
        try:
            while True:
                try:
                    async with asyncio.timeout(self._inactivity):
                        chunk = await content.readany()
                except TimeoutError:
                    raise StreamBrokenError(
                        f"no event or bookmark for {self._inactivity:g}s: the watch is stuck",
                        stuck=True,
                    ) from None
                except (aiohttp.ClientError, OSError) as err:
                    raise StreamBrokenError(_describe_transport_error(err, 0)) from None
                if not chunk:
                    return  # the server closed the stream (its timeout): a normal end
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if line.strip():
                        yield _event(line)
                if len(buffer) > WATCH_LINE_LIMIT:
                    raise StreamBrokenError(f"a watch event longer than {WATCH_LINE_LIMIT} bytes")
        finally:
            self._response.release()

    async def aclose(self) -> None:
        self._response.close()


class _LogStream:
    """The lines of a log response (``timestamps=true``) under an inactivity watchdog.

    Lines are split on ``\\n`` (a ``\\r\\n`` ending loses its ``\\r``), the text after the timestamp
    is capped at :data:`LOG_LINE_LIMIT` bytes (the rest of a longer line is dropped as it arrives,
    never held) and decoded as UTF-8 with invalid bytes replaced. An unfinished last line when the
    stream ends is dropped: a reconnect from its second sends it whole.
    """

    def __init__(self, response: aiohttp.ClientResponse, inactivity: float) -> None:
        self._response = response
        self._inactivity = inactivity

    async def __aiter__(self) -> AsyncGenerator[TimedLine, None]:
        buffer = bytearray()
        skipping = False  # in the dropped rest of a line that was too long
        content = self._response.content
        try:
            while True:
                try:
                    async with asyncio.timeout(self._inactivity):
                        chunk = await content.readany()
                except TimeoutError:
                    silent = f"no output for {self._inactivity:g}s"
                    raise StreamIdleError(silent, stuck=True) from None
                except (aiohttp.ClientError, OSError) as err:
                    raise StreamBrokenError(_describe_transport_error(err, 0)) from None
                if not chunk:
                    return  # the server ended the stream
                start = 0
                while start < len(chunk):
                    newline = chunk.find(b"\n", start)
                    end = len(chunk) if newline < 0 else newline
                    if not skipping:
                        buffer += chunk[start:end]
                        if len(buffer) > (cut := _line_cap(buffer)):
                            del buffer[cut:]
                            yield _timed_line(bytes(buffer))
                            skipping = True
                    if newline >= 0:
                        if not skipping:
                            yield _timed_line(bytes(buffer))
                        buffer.clear()
                        skipping = False
                    start = end + 1
                if skipping:
                    buffer.clear()
        finally:
            self._response.release()

    def close(self) -> None:
        self._response.close()


def _line_cap(line: bytearray) -> int:
    """Where a too long line is cut: :data:`LOG_LINE_LIMIT` bytes after its timestamp."""
    space = line.find(b" ", 0, _STAMP_LIMIT)
    return (space + 1 if space >= 0 else 0) + LOG_LINE_LIMIT


def _timed_line(line: bytes) -> TimedLine:
    if line.endswith(b"\r"):
        line = line[:-1]
    stamp, space, text = line.partition(b" ")
    if not space or len(stamp) >= _STAMP_LIMIT:  # not a timestamped line
        stamp, text = b"", line
    return TimedLine(stamp.decode("ascii", "replace"), text.decode("utf-8", "replace"))


def _event(line: bytes) -> WatchEvent:
    try:
        parsed = json.loads(line)
    except ValueError:
        raise StreamBrokenError(f"an unreadable watch event: {line[:100]!r}") from None
    kind, obj = (parsed.get("type"), parsed.get("object")) if isinstance(parsed, dict) else (0, 0)
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise StreamBrokenError(f"a watch event without type and object: {line[:100]!r}")
    return WatchEvent(type=kind, object=obj)


def _response(status: int, raw: bytes, retry_after: str | None) -> ApiResponse:
    body: JSON | None = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(raw) if raw else None
        body = parsed if isinstance(parsed, dict) else None
    message = ""
    if not 200 <= status < 300:
        message = str((body or {}).get("message") or raw[:300].decode(errors="replace"))
    delay = None
    if retry_after:
        with contextlib.suppress(ValueError):
            delay = max(0.0, float(retry_after))
    return ApiResponse(status=status, body=body, message=message, retry_after=delay)


def _describe_transport_error(err: BaseException, budget: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {budget:g}s"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the API server address: {err}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
