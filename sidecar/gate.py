"""The only module that talks to the Kubernetes API: it writes the gate condition(s) of our Pod.

Status manager semantics: read the Pod once, then write only when the desired condition differs
from what the server holds (no per-period traffic), and re-read every ``GATE_RESYNC_SECONDS`` to
repair a condition that something else changed. Failures back off exponentially with jitter
(honouring ``Retry-After``); whatever the checks say when the API answers again is what gets
written, so a transition during an outage is not lost. Each kind of failure is logged once, when it
starts, with what to fix, and once more when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from sidecar import __version__
from sidecar.clock import Clock
from sidecar.conditions import (
    JSON,
    Condition,
    desired_condition,
    missing_gate_snippet,
    pod_conditions,
    readiness_gates,
    status_patch,
    stopped_condition,
    timestamp,
)
from sidecar.config import ApiAccess, Identity
from sidecar.metrics import Metrics
from sidecar.results import GateState, Results

USER_AGENT = f"readiness-gate-sidecar/{__version__}"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
REQUEST_TIMEOUT = 10.0
SHUTDOWN_WRITE_TIMEOUT = 0.5
BACKOFF_BASE = 0.5
BACKOFF_CAP = 16.0
RETRY_AFTER_CAP = 60.0


# --- transport -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiResponse:
    status: int  # 0: no HTTP response (connection error, timeout)
    body: JSON | None = None
    message: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class PodApi(Protocol):
    async def get_pod(self) -> ApiResponse: ...

    async def patch_status(self, patch: JSON, *, budget: float | None = None) -> ApiResponse:
        """``budget``: the request's timeout; None is the API's usual request timeout."""
        ...

    async def create_event(self, event: JSON) -> ApiResponse: ...

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
        request: Callable[[Any, float], Awaitable[aiohttp.ClientResponse]],
        *,
        budget: float | None = None,
    ) -> ApiResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        budget = self._timeout if budget is None else budget
        try:
            async with asyncio.timeout(budget):
                api = await self._api()
                response = await request(api, budget)
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


# --- writer ----------------------------------------------------------------------------------


class ApiHealth(StrEnum):
    OK = "ok"
    UNAVAILABLE = "unavailable"
    THROTTLED = "throttled"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    REJECTED = "rejected"
    POD_GONE = "pod_gone"


class Backoff:
    """Exponential backoff with equal jitter: half the delay is fixed, half random."""

    def __init__(self, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP):
        self._rng = rng
        self._base = base
        self._cap = cap
        self._attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self._cap, self._base * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay

    def reset(self) -> None:
        self._attempt = 0


@dataclass(slots=True)
class GateRecord:
    """What /status shows about one gate."""

    key: str | None
    condition_type: str | None = None
    declared: bool | None = None
    server: Condition | None = None
    last_write_at: float | None = None
    last_write_status: str | None = None
    transitions: int = 0
    first_true_after: float | None = None


@dataclass(slots=True)
class WriterStatus:
    synced: bool = False
    api: ApiHealth = ApiHealth.OK
    api_message: str = ""
    pod_declares: list[str] = field(default_factory=list)
    gates: dict[str | None, GateRecord] = field(default_factory=dict)
    writes: int = 0


class GateWriter:
    def __init__(
        self,
        api: PodApi,
        results: Results,
        *,
        identity: Identity,
        condition_type: str | None,
        resync: float,
        events: bool,
        clock: Clock,
        rng: random.Random,
        metrics: Metrics,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        shutdown_timeout: float = SHUTDOWN_WRITE_TIMEOUT,
    ) -> None:
        self._api = api
        self._results = results
        self._identity = identity
        # The UID guard: from the downward API, else learned from the first read.
        self._uid = identity.pod_uid
        self._default_type = condition_type
        self._resync = resync
        self._events = events
        self._clock = clock
        self._metrics = metrics
        self._backoff = Backoff(rng, backoff_base, backoff_cap)
        self._shutdown_timeout = shutdown_timeout
        self._started = clock.monotonic()
        self._log = structlog.get_logger()
        self._retry_at: float | None = None
        self._failed_verb = ""
        self._warned_events = False
        self._warned_unknown_type = False
        self.status = WriterStatus(gates={k: GateRecord(key=k) for k in results.gate_keys})

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the Pod, then write whenever the desired condition differs from the server's,
        re-reading every ``resync`` seconds. Returns only when the Pod is gone."""
        need_read = True
        next_resync: float | None = None
        while self.status.api is not ApiHealth.POD_GONE:
            await self._sleep_backoff()
            seen = self._results.version
            if need_read or (next_resync is not None and self._clock.monotonic() >= next_resync):
                need_read = not await self._sync()
                if need_read:
                    continue  # back off, then read again: writes wait for a fresh view
                if self._resync > 0:
                    next_resync = self._clock.monotonic() + self._resync
            if not await self._write_changes():
                continue  # back off, then write whatever the checks say by then
            wait = None if next_resync is None else next_resync - self._clock.monotonic()
            await self._wait_for_change(seen, wait)

    async def write_stopped(self) -> None:
        """GATE_ON_SHUTDOWN=false: one quick attempt to write False before exiting."""
        if not self.status.synced or self.status.api is ApiHealth.POD_GONE:
            return
        now = self._clock.time()
        conditions = [
            stopped_condition(record.condition_type, record.server, now)
            for record in self.status.gates.values()
            if record.condition_type and record.declared
        ]
        if not conditions:
            return
        response = await self._api.patch_status(
            status_patch(conditions, self._uid), budget=self._shutdown_timeout
        )
        if response.ok:
            self._log.info("gate_written_on_shutdown", condition_types=[c.type for c in conditions])
        else:
            self._log.warning(
                "gate_not_written_on_shutdown",
                status=response.status or None,
                error=response.message,
            )

    # --- reading -----------------------------------------------------------------------------

    async def _sync(self) -> bool:
        """GET the Pod: learn its gates and current conditions. True on success."""
        response = await self._api.get_pod()
        if not response.ok:
            await self._failed("get", response)
            return False
        pod = response.body or {}
        if not self._same_pod(pod):
            return False
        self._recovered("get")
        self.status.pod_declares = readiness_gates(pod)
        self._resolve_types()
        conditions = pod_conditions(pod)
        for record in self.status.gates.values():
            if record.condition_type:
                record.server = conditions.get(record.condition_type)
        if not self.status.synced:
            self._log.info("pod_synced", readiness_gates=self.status.pod_declares)
        self.status.synced = True
        return True

    def _same_pod(self, pod: JSON) -> bool:
        uid = (pod.get("metadata") or {}).get("uid")
        if self._uid and uid and uid != self._uid:
            self._set_health(
                ApiHealth.POD_GONE,
                f"pod {self._pod} now has uid {uid}, not ours ({self._uid}): "
                "it was deleted and replaced; this agent stops writing",
            )
            return False
        if not self._uid and isinstance(uid, str) and uid:
            self._uid = uid  # without POD_UID: guard against a replacement from now on
        return True

    def _resolve_types(self) -> None:
        declared = self.status.pod_declares
        for key, record in self.status.gates.items():
            if record.condition_type is None:
                record.condition_type = key or self._default_type or self._single_gate(declared)
            was = record.declared
            record.declared = record.condition_type in declared if record.condition_type else False
            if record.condition_type and not record.declared and was is not False:
                self._not_declared(record.condition_type)

    def _single_gate(self, declared: list[str]) -> str | None:
        if len(declared) == 1:
            return declared[0]
        if self._warned_unknown_type:
            return None
        self._warned_unknown_type = True
        self._log.error(
            "gate_condition_type_unknown",
            readiness_gates=declared,
            fix="set GATE_CONDITION_TYPE to the readiness gate this agent reports"
            if declared
            else "declare a readiness gate in the Pod spec and set GATE_CONDITION_TYPE",
        )
        return None

    def _not_declared(self, condition_type: str) -> None:
        self._log.error(
            "gate_not_declared",
            condition_type=condition_type,
            pod_declares=self.status.pod_declares,
            effect="the kubelet ignores this condition for Ready; nothing is written",
            fix=f"add to the Pod spec (readinessGates cannot change on a running Pod):\n"
            f"{missing_gate_snippet([condition_type])}",
        )

    # --- writing -----------------------------------------------------------------------------

    async def _write_changes(self) -> bool:
        """PATCH what differs from the server (nothing when nothing does). False on failure."""
        now = self._clock.time()
        gates = self._results.gates()
        changes: list[tuple[GateRecord, Condition, GateState]] = []
        for key, record in self.status.gates.items():
            state = gates[key]
            self._metrics.gate_status.labels(record.condition_type or "").set(
                -1 if state.pending else int(state.ok)
            )
            if not (record.condition_type and record.declared):
                continue
            wanted = desired_condition(record.condition_type, state, record.server, now)
            if wanted is not None:
                changes.append((record, wanted, state))
        if not changes:
            return True
        patch = status_patch([c for _, c, _ in changes], self._uid)
        response = await self._api.patch_status(patch)
        if not response.ok:
            await self._failed("patch", response)
            return False
        self._recovered("patch")
        self.status.writes += 1
        server = pod_conditions(response.body or {})
        for record, wanted, state in changes:
            flipped = record.server is None or record.server.status != wanted.status
            record.server = server.get(wanted.type, wanted)
            record.last_write_at = now
            record.last_write_status = wanted.status
            self._log.info(
                "gate_written",
                condition_type=wanted.type,
                status=wanted.status,
                reason=wanted.reason,
                message=wanted.message,
            )
            if flipped:
                await self._transitioned(record, wanted, state)
        return True

    async def _transitioned(self, record: GateRecord, wanted: Condition, state: GateState) -> None:
        record.transitions += 1
        self._metrics.gate_transitions.labels(wanted.type, wanted.status).inc()
        if wanted.status == "True" and record.first_true_after is None:
            record.first_true_after = self._clock.monotonic() - self._started
            self._metrics.time_to_first_ready.labels(wanted.type).set(record.first_true_after)
        if self._events and not state.pending:
            await self._emit_event(wanted)

    async def _emit_event(self, condition: Condition) -> None:
        ident = self._identity
        now = timestamp(self._clock.time())
        ready = condition.status == "True"
        event = {
            "metadata": {"generateName": f"{ident.pod_name}.", "namespace": ident.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": ident.pod_name,
                "namespace": ident.namespace,
                **({"uid": ident.pod_uid} if ident.pod_uid else {}),
            },
            "type": "Normal" if ready else "Warning",
            "reason": "ReadinessGateTrue" if ready else "ReadinessGateFalse",
            "message": f"{condition.type} is {condition.status}: {condition.message}"[:1024],
            "source": {"component": "readiness-gate-sidecar"},
            "reportingComponent": "readiness-gate-sidecar",
            "reportingInstance": ident.pod_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        response = await self._api.create_event(event)
        if not response.ok and not self._warned_events:
            self._warned_events = True
            self._log.warning(
                "event_not_created",
                status=response.status,
                error=response.message,
                fix="grant create on events in the Pod's namespace, or set GATE_EVENTS=false"
                if response.status == 403
                else None,
            )

    # --- failures ----------------------------------------------------------------------------

    async def _failed(self, verb: str, response: ApiResponse) -> None:
        status = response.status
        first_rejection = status == 401 and self.status.api is not ApiHealth.UNAUTHORIZED
        self._failed_verb = verb
        if status == 401:
            await self._api.reload_credentials()
            self._set_health(ApiHealth.UNAUTHORIZED, "token rejected (401): re-reading it")
        elif status == 403:
            self._set_health(ApiHealth.FORBIDDEN, self._forbidden_fix(verb, response.message))
        elif status == 404 or (status in (409, 422) and "uid" in response.message.lower()):
            self._set_health(
                ApiHealth.POD_GONE,
                f"pod {self._pod} no longer exists ({status}: {response.message}); "
                "this agent stops writing and keeps serving its endpoints until it is stopped",
            )
            return
        elif status == 429:
            self._set_health(ApiHealth.THROTTLED, f"throttled (429): {response.message}")
        elif status == 0 or status >= 500:
            code = f" ({status})" if status else ""
            self._set_health(
                ApiHealth.UNAVAILABLE, f"API server unavailable{code}: {response.message}"
            )
        else:
            self._set_health(ApiHealth.REJECTED, f"{verb} rejected ({status}): {response.message}")
        # A rotated token is retried at once; a token that stays rejected backs off.
        self._schedule_retry(0.0 if first_rejection else None, response.retry_after)

    def _schedule_retry(self, delay: float | None, retry_after: float | None) -> None:
        wait = self._backoff.next_delay(retry_after) if delay is None else delay
        self._retry_at = self._clock.monotonic() + wait

    def _forbidden_fix(self, verb: str, message: str) -> str:
        ns = self._identity.namespace
        rule = {
            "get": '{apiGroups: [""], resources: ["pods"], verbs: ["get"]}',
            "patch": '{apiGroups: [""], resources: ["pods/status"], verbs: ["patch"]}',
        }.get(verb, "")
        if "admission" in message.lower() or "policy" in message.lower():
            return f"denied by admission policy: {message}"
        return (
            f"forbidden: {message}. The agent's ServiceAccount needs a Role in namespace {ns} "
            f"with the rule {rule} and a RoleBinding to it"
        )

    def _set_health(self, health: ApiHealth, message: str) -> None:
        if health is not self.status.api:
            log = self._log.error if health in _LOUD else self._log.warning
            log("api_" + str(health), error=message)
        self.status.api = health
        self.status.api_message = message

    def _recovered(self, verb: str) -> None:
        """A request succeeded. A refusal of one verb (403, 4xx) is not cured by another verb's
        success: reading the Pod says nothing about the right to patch its status."""
        if self.status.api in _PER_VERB and verb != self._failed_verb:
            return
        if self.status.api is not ApiHealth.OK:
            self._log.info("api_recovered", after=str(self.status.api))
        self.status.api = ApiHealth.OK
        self.status.api_message = ""
        self._backoff.reset()
        self._retry_at = None

    async def _sleep_backoff(self) -> None:
        """Wait out the delay the last failure scheduled (nothing to wait after a success)."""
        if self._retry_at is not None:
            await self._clock.sleep(max(0.0, self._retry_at - self._clock.monotonic()))
            self._retry_at = None

    async def _wait_for_change(self, seen: int, wait: float | None) -> None:
        if self._results.version != seen or (wait is not None and wait <= 0):
            return
        waiter = asyncio.ensure_future(self._results.wait_changed(seen))
        sleeper = None if wait is None else asyncio.ensure_future(self._clock.sleep(wait))
        tasks = {waiter} | ({sleeper} if sleeper else set())
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def _pod(self) -> str:
        return f"{self._identity.namespace}/{self._identity.pod_name}"


_LOUD = frozenset({ApiHealth.FORBIDDEN, ApiHealth.POD_GONE, ApiHealth.REJECTED})
_PER_VERB = frozenset({ApiHealth.FORBIDDEN, ApiHealth.REJECTED})
