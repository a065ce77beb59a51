"""How the agent's API loops see the API: one health, failures classified and logged once.

The Pod observer (reads, the watch) and the gate writer (status patches) share one
:class:`ApiStatus`. A failure is classified here, at the client layer, into what to do next
(retry at once after a token re-read, back off, re-read the Pod, stop because the Pod is gone),
and each kind of failure is logged once when it starts, with what to fix, and once more when it
ends — never per retry. Each loop keeps its own :class:`~sidecar.backoff.Backoff`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from sidecar.api import ApiResponse


class ApiHealth(StrEnum):
    OK = "ok"
    UNAVAILABLE = "unavailable"
    THROTTLED = "throttled"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    REJECTED = "rejected"
    POD_GONE = "pod_gone"


_LOUD = frozenset({ApiHealth.FORBIDDEN, ApiHealth.POD_GONE, ApiHealth.REJECTED})

#: The Role rule each verb needs, for the 403 message.
ROLE_RULES = {
    "get": '{apiGroups: [""], resources: ["pods"], verbs: ["get"]}',
    "watch": '{apiGroups: [""], resources: ["pods"], verbs: ["list", "watch"]}',
    "patch": '{apiGroups: [""], resources: ["pods/status"], verbs: ["patch"]}',
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What a loop does after a failed request."""

    retry_now: bool = False  # a first 401: the token was re-read, try again at once
    reread: bool = False  # the Pod must be read again before the next write (409)
    gone: bool = False  # the Pod was deleted or replaced: stop


class ApiStatus:
    """The shared view of the API: health, its message, and whether our Pod still exists.

    Failures are kept per verb: a failure of one verb is not cured by another verb's success
    (reading the Pod says nothing about the right to patch its status; a watch that opens says
    nothing about a proxy that drops patches). The health is the latest failure of a verb that
    still fails, OK when none does.
    """

    def __init__(
        self, *, pod: str, namespace: str, reload_credentials: Callable[[], Awaitable[None]]
    ) -> None:
        self._pod = pod
        self._namespace = namespace
        self._reload = reload_credentials
        self._failing: dict[str, tuple[ApiHealth, str]] = {}
        self._log = structlog.get_logger()
        self.health = ApiHealth.OK
        self.message = ""
        self.gone_event = asyncio.Event()

    @property
    def gone(self) -> bool:
        return self.health is ApiHealth.POD_GONE

    async def failed(self, verb: str, response: ApiResponse) -> Verdict:
        status = response.status
        if self.gone:
            return Verdict(gone=True)
        first_rejection = status == 401 and self.health is not ApiHealth.UNAUTHORIZED
        if status == 401:
            await self._reload()
            self._fail(verb, ApiHealth.UNAUTHORIZED, "token rejected (401): re-reading it")
            return Verdict(retry_now=first_rejection)
        if status == 404 or (status in (409, 422) and "uid" in response.message.lower()):
            self.pod_gone(f"pod {self._pod} no longer exists ({status}: {response.message})")
            return Verdict(gone=True)
        if status == 403:
            self._fail(verb, ApiHealth.FORBIDDEN, self._forbidden_fix(verb, response.message))
        elif status == 429:
            self._fail(verb, ApiHealth.THROTTLED, f"throttled (429): {response.message}")
        elif status == 0 or status >= 500:
            code = f" ({status})" if status else ""
            message = f"API server unavailable{code}: {response.message}"
            self._fail(verb, ApiHealth.UNAVAILABLE, message)
        elif status == 409:
            message = f"{verb} conflict (409): {response.message}; re-reading the Pod first"
            self._fail(verb, ApiHealth.REJECTED, message)
            return Verdict(reread=True)
        else:
            message = f"{verb} rejected ({status}): {response.message}"
            self._fail(verb, ApiHealth.REJECTED, message)
        return Verdict()

    def recovered(self, verb: str) -> bool:
        """A request of ``verb`` succeeded; True when no verb fails any more."""
        if self.gone:
            return False
        self._failing.pop(verb, None)
        self._show()
        return not self._failing

    def _fail(self, verb: str, health: ApiHealth, message: str) -> None:
        self._failing.pop(verb, None)
        self._failing[verb] = (health, message)  # the latest failure comes last
        self._show()

    def _show(self) -> None:
        if self._failing:
            health, message = next(reversed(self._failing.values()))
            self._set(health, message)
        elif self.health is not ApiHealth.OK:
            self._log.info("api_recovered", after=str(self.health))
            self.health = ApiHealth.OK
            self.message = ""

    def pod_gone(self, message: str) -> None:
        self.gone_event.set()
        self._set(
            ApiHealth.POD_GONE,
            f"{message}; this agent stops writing and keeps serving its endpoints until it is "
            "stopped",
        )

    def _forbidden_fix(self, verb: str, message: str) -> str:
        if "admission" in message.lower() or "policy" in message.lower():
            return f"denied by admission policy: {message}"
        rule = ROLE_RULES.get(verb, "")
        return (
            f"forbidden: {message}. The agent's ServiceAccount needs a Role in namespace "
            f"{self._namespace} with the rule {rule} and a RoleBinding to it"
        )

    def _set(self, health: ApiHealth, message: str) -> None:
        if health is not self.health:
            log = self._log.error if health in _LOUD else self._log.warning
            log("api_" + str(health), error=message)
        self.health = health
        self.message = message
