"""The ``http`` check: GET a URL and judge the status code and, optionally, the body.

The check behaves like a kubelet HTTP probe:

- **TLS certificates are not verified** (``https`` URLs accept self-signed or expired certificates),
  as the kubelet does: the check asks whether the application answers, not who it is.
- Redirects are not followed: a 3xx status is judged by ``status_min``/``status_max`` like any
  other code (the default range 200-399 accepts it).
- Proxies from the environment (``HTTP_PROXY``...) are ignored, no cookies are kept, every probe
  opens a new connection (no keep-alive, so a stale pooled connection never fails a probe) and the
  host name is resolved afresh each time (no DNS cache).
- The request carries ``User-Agent: readiness-gate-sidecar/<version>``.

Success: ``status_min <= status <= status_max`` and, when ``body`` is set, the pattern matches the
first 64 KiB of the body decoded as UTF-8 (undecodable bytes replaced). The request has no timeout
of its own: the prober bounds the probe with the check's timeout by cancelling it, which closes the
connection.

One :class:`aiohttp.ClientSession` is created lazily, inside the running loop, on the first probe
and reused; :meth:`HttpCheck.aclose` closes it.
"""

from __future__ import annotations

import socket

import aiohttp
from yarl import URL

from sidecar import __version__
from sidecar.checks.base import timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, HttpParams, bounded

#: How much of the body the ``body`` pattern sees.
BODY_CAP = 64 * 1024
USER_AGENT = f"readiness-gate-sidecar/{__version__}"
_SHOWN_LIMIT = 60


def _show_text(text: str, limit: int = _SHOWN_LIMIT) -> str:
    """``text`` with non-printable characters escaped, cut to ``limit`` characters."""
    return bounded("".join(c if c.isprintable() else repr(c)[1:-1] for c in text), limit)


def _display_url(url: str) -> str:
    """The URL as shown in details: without credentials, bounded."""
    try:
        parsed = URL(url)
        if parsed.user is not None or parsed.password is not None:
            url = str(parsed.with_user(None))
    except (TypeError, ValueError):
        pass
    return _show_text(url, 120)


class HttpCheck:
    """Probe an HTTP(S) endpoint with a GET request."""

    def __init__(self, spec: CheckSpec, clock: Clock) -> None:
        if not isinstance(spec.params, HttpParams):
            raise TypeError(f"{spec.label}: expected HttpParams, got {type(spec.params).__name__}")
        self.spec = spec
        self._params = spec.params
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._what = f"GET {_display_url(spec.params.url)}"

    def wakeups(self) -> None:
        return None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def forget_before(self, started_at: float) -> None:
        return None  # every probe asks the live application

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=False,  # like the kubelet: certificates are not verified
                    force_close=True,
                    use_dns_cache=False,
                ),
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),  # the prober bounds the probe
                trust_env=False,
            )
        return self._session

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        ok, detail = await self._evaluate()
        return timed_result(self._clock, started, ok, detail)

    async def _evaluate(self) -> tuple[bool, str]:
        params = self._params
        what = self._what
        try:
            async with self._client().get(params.url, allow_redirects=False) as response:
                status = response.status
                if not params.status_min <= status <= params.status_max:
                    return False, (
                        f"{what} returned {status}"
                        f" (expected {params.status_min}-{params.status_max})"
                    )
                if params.body is None:
                    return True, f"{what} returned {status}"
                body = await _read_capped(response.content, BODY_CAP)
        except aiohttp.ClientError as exc:
            return False, f"{what} failed: {_client_error(exc)}"
        except OSError as exc:  # includes TimeoutError raised inside the client
            return False, f"{what} failed: {_os_error(exc)}"

        shown = _show_text(params.body.pattern)
        if params.body.search(body.decode("utf-8", errors="replace")):
            return True, f'{what} returned {status}, body matches "{shown}"'
        return False, f'body of {what} does not match "{shown}"'


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> bytes:
    """Read at most ``cap`` bytes of the body; the rest is discarded with the connection."""
    data = bytearray()
    while len(data) < cap:
        chunk = await stream.read(cap - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _os_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


#: Client errors whose detail needs nothing from the exception; the first match wins.
_CLIENT_ERRORS: tuple[tuple[type[aiohttp.ClientError], str], ...] = (
    (aiohttp.ServerDisconnectedError, "server closed the connection without a complete reply"),
    (aiohttp.ServerTimeoutError, "timed out"),
    (aiohttp.NonHttpUrlClientError, "not an http or https URL"),
    (aiohttp.InvalidURL, "invalid URL"),
    (aiohttp.ClientPayloadError, "invalid response body"),
    (aiohttp.ClientConnectionResetError, "connection reset"),
)


def _client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return f"cannot resolve host {exc.host}: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_error(exc.os_error)
    if isinstance(exc, aiohttp.ClientResponseError):
        lines = exc.message.strip().splitlines()
        reason = lines[0].rstrip(": ") if lines else f"status {exc.status}"
        return f"invalid HTTP reply: {_show_text(reason)}"
    for kind, message in _CLIENT_ERRORS:
        if isinstance(exc, kind):
            return message
    if isinstance(exc, aiohttp.ClientOSError):
        return _os_error(exc)
    return _show_text(str(exc) or type(exc).__name__)
