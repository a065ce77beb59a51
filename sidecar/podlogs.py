"""Container logs for the checks: :class:`~sidecar.checks.ContainerLogs` over the API transport.

The checks layer follows a container's output (``sidecar/checks/_container_lines.py``) through
this small adapter and never imports the API. Here the transport's answers become what that layer
understands: a stream of :class:`~sidecar.checks.LogLine`, or a classified
:class:`~sidecar.checks.LogRefusal` with what to fix. A first 401 re-reads the token and retries
at once, like every other request of the agent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from sidecar.api import ApiResponse, LogLines, PodApi, StreamBrokenError, StreamIdleError
from sidecar.checks import LogLine, LogRefusal, LogStream, LogStreamError, RefusalKind

#: The Role rule that reading a container's output needs.
POD_LOGS_RULE = '{apiGroups: [""], resources: ["pods/log"], verbs: ["get"]}'
#: Where the shipped objects grant it.
POD_LOGS_GRANT = "chart value rbac.podLogs=true, or examples/rbac/pod-logs-rbac.yaml"


class PodLogs:
    """The log streams of the containers of the agent's own Pod (``namespace``)."""

    def __init__(self, api: PodApi, namespace: str) -> None:
        self._api = api
        self._namespace = namespace

    async def open(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> LogStream | LogRefusal:
        for attempt in range(2):
            response, lines = await self._api.read_log(
                container, since=since, tail_lines=tail_lines, follow=follow, inactivity=inactivity
            )
            if lines is not None:
                return _Stream(lines)
            if response.status != 401 or attempt:
                break
            await self._api.reload_credentials()  # the kubelet rotated the token: read it again
        return self.refusal(response)

    def refusal(self, response: ApiResponse) -> LogRefusal:
        status, message = response.status, response.message
        if status == 403:
            return LogRefusal(
                kind=RefusalKind.FORBIDDEN,
                message=(
                    f"forbidden (403): {message}. Reading a container's output needs a Role in "
                    f"namespace {self._namespace} with the rule {POD_LOGS_RULE} and a RoleBinding "
                    f"of it to the agent's ServiceAccount ({POD_LOGS_GRANT})"
                ),
                detail=f"forbidden (403): the ServiceAccount needs get on pods/log "
                f"({POD_LOGS_GRANT})",
            )
        if status == 400:  # the API's own words: 'container "app" ... is waiting to start: ...'
            kind, text = RefusalKind.NOT_RUNNING, message
        elif status in _KINDS:
            kind, what = _KINDS[status]
            text = f"{what} ({status}): {message}"
        elif status == 0 or status >= 500:
            kind = RefusalKind.UNAVAILABLE
            text = f"API server unavailable{f' ({status})' if status else ''}: {message}"
        else:
            kind, text = RefusalKind.REJECTED, f"refused ({status}): {message}"
        return LogRefusal(kind=kind, message=text, detail=text, retry_after=response.retry_after)


_KINDS = {
    401: (RefusalKind.UNAUTHORIZED, "token rejected"),
    404: (RefusalKind.GONE, "not found"),
    429: (RefusalKind.THROTTLED, "throttled"),
}


class _Stream:
    """The transport's log lines as the checks layer's :class:`~sidecar.checks.LogStream`."""

    def __init__(self, lines: LogLines) -> None:
        self._lines = lines

    async def __aiter__(self) -> AsyncGenerator[LogLine, None]:
        try:
            async with contextlib.aclosing(self._lines.__aiter__()) as lines:
                async for line in lines:
                    yield LogLine(line.stamp, line.text)
        except StreamIdleError as err:
            raise LogStreamError(str(err), idle=True) from None
        except StreamBrokenError as err:
            raise LogStreamError(str(err)) from None

    def close(self) -> None:
        self._lines.close()
