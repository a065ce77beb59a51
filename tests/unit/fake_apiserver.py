"""A fake Kubernetes API server at the HTTP level, for testing the gate writer end to end.

A real aiohttp server on 127.0.0.1 that serves the requests the agent makes:

- ``GET /api/v1/namespaces/{ns}/pods/{name}``
- ``GET /api/v1/namespaces/{ns}/pods?watch=true&fieldSelector=metadata.name={name}`` from a
  ``resourceVersion``: every change of the Pod after it, in order, as the watch cache serves them
  (``410 Gone`` as an ERROR event for a version older than the kept history, see ``compact``);
  ``BOOKMARK`` events on demand (``bookmark``); the stream ends after ``timeoutSeconds`` or on
  ``end_watches``; ``hang_watches`` makes streams go silent (no events, no end)
- ``PATCH /api/v1/namespaces/{ns}/pods/{name}/status``: strategic merge patch only (415 otherwise);
  ``status.conditions`` merged by ``type`` like the real server (other conditions kept, fields a
  patch omits kept, ``lastTransitionTime`` never set by the server); ``metadata.uid`` is a
  precondition (409 when it differs, with the real server's message)
- ``POST /api/v1/namespaces/{ns}/events``, ``PATCH /api/v1/namespaces/{ns}/events/{name}``
- ``GET /api/v1/namespaces/{ns}/pods/{name}/log?container=...``, as the API server and the
  kubelet serve it: each line prefixed with its RFC 3339 timestamp (nine fractional digits) with
  ``timestamps=true``; ``sinceTime`` honoured in whole seconds (the API server passes it on to
  the kubelet without fractions), ``tailLines``; ``follow=true`` streams the lines of the current
  instance of the container as they are logged (``log``) until it exits (``restart_container``:
  a new instance, whose log the next request gets), ``end_log_streams`` (the log rotated, the
  kubelet restarted) or forever; ``logs_hang`` makes streams go silent. A container without an
  instance yet answers 400 "waiting to start", like the kubelet.

Every change of the Pod (a status patch, ``set_condition``, ``set_container``, ``replace_pod``,
``delete_pod``) gets a new resourceVersion and is sent to the open watches.

Every request is recorded (method, path, headers including Authorization, JSON body, arrival time,
the status answered). Answers can be scripted per route: the next request(s) get a given
``Reply`` (an HTTP error with an optional Retry-After, a hang that never answers, a dropped
connection), or every request does until cleared. ``tokens`` makes the server answer 401 to any
other bearer token. ``stop()`` closes the listener and every connection (connection refused until
``start()`` again, on the same port).
"""

from __future__ import annotations

import asyncio
import calendar
import copy
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


class Route(StrEnum):
    GET = "get"  # GET the Pod
    WATCH = "watch"  # open a watch of the Pod
    PATCH = "patch"  # PATCH the Pod's status
    EVENT = "event"  # POST an Event
    EVENT_PATCH = "event_patch"  # PATCH an Event (count, lastTimestamp)
    LOG = "log"  # GET a container's log


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """How to answer one request instead of serving it."""

    status: int = 500
    message: str = ""
    retry_after: str | None = None
    hang: bool = False  # never answer (until the server stops)
    drop: bool = False  # close the connection without an answer


Serve = Callable[[web.Request, "Recorded"], web.Response]

HANG = Reply(hang=True)
DROP = Reply(drop=True)


@dataclass(slots=True, kw_only=True)
class Recorded:
    method: str
    path: str
    query: Mapping[str, str]
    route: Route
    headers: Mapping[str, str]
    body: Any
    at: float  # event-loop time (time.monotonic) when the request arrived
    status: int | None = None  # what the server answered; None: no answer (yet)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def conditions(self) -> list[JSON]:
        """The conditions a status patch carries."""
        body = self.body if isinstance(self.body, dict) else {}
        return list((body.get("status") or {}).get("conditions") or [])


def make_pod(
    *,
    namespace: str,
    name: str,
    uid: str,
    readiness_gates: Iterable[str],
    conditions: Iterable[JSON] = (),
) -> JSON:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"},
        "spec": {
            "containers": [{"name": "app", "image": "tomcat:9"}],
            "readinessGates": [{"conditionType": t} for t in readiness_gates],
        },
        "status": {"phase": "Running", "conditions": [dict(c) for c in conditions]},
    }


def _status(code: int, message: str, reason: str = "") -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class FakeApiServer:
    def __init__(self, pod: JSON) -> None:
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.pod: JSON | None = copy.deepcopy(pod)  # None: deleted
        self.requests: list[Recorded] = []
        self.events: list[JSON] = []
        self.tokens: set[str] | None = None  # bearer tokens accepted; None: any
        self._scripted: dict[Route, deque[Reply]] = {route: deque() for route in Route}
        self._always: dict[Route, Reply] = {}
        self._names = itertools.count(1)
        self._arrived = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.history: list[tuple[int, str, JSON]] = []  # (resourceVersion, type, Pod) per change
        self._oldest = 0  # versions below this were compacted away
        self._change = asyncio.Event()
        self._end_watches = asyncio.Event()
        self.watches_hang = False
        self.open_watches = 0
        self.container_logs: dict[str, list[list[tuple[int, bytes]]]] = {}  # instances' lines
        self._log_change = asyncio.Event()
        self._end_logs = asyncio.Event()
        self.logs_hang = False
        self.open_logs = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again, on the same port once one was chosen)."""
        app = web.Application()
        base = "/api/v1/namespaces/{namespace}"
        app.router.add_get(base + "/pods/{name}", self._get)
        app.router.add_get(base + "/pods/{name}/log", self._log)
        app.router.add_get(base + "/pods", self._watch)
        app.router.add_patch(base + "/pods/{name}/status", self._patch)
        app.router.add_post(base + "/events", self._event)
        app.router.add_patch(base + "/events/{event}", self._event_patch)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener and every connection; hung requests are let go first."""
        if self._runner is None:
            return
        self._release.set()
        self._end_watches.set()
        self._end_logs.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        self._release = asyncio.Event()
        self._end_watches = asyncio.Event()
        self._end_logs = asyncio.Event()

    # --- scripting ---------------------------------------------------------------------------

    def script(self, route: Route, *replies: Reply) -> None:
        """The next requests on ``route`` get these replies, one each, in order."""
        self._scripted[route].extend(replies)

    def fail(self, reply: Reply | None, *routes: Route) -> None:
        """Every request on ``routes`` (default: all) gets ``reply`` until ``fail(None)``."""
        for route in routes or tuple(Route):
            if reply is None:
                self._always.pop(route, None)
            else:
                self._always[route] = reply

    # --- the Pod -----------------------------------------------------------------------------

    def condition(self, condition_type: str) -> JSON | None:
        for found in self._conditions():
            if found.get("type") == condition_type:
                return dict(found)
        return None

    def set_condition(self, condition: JSON) -> None:
        """Change a condition behind the agent's back (as another writer would)."""
        conditions = self._conditions()
        for index, found in enumerate(conditions):
            if found.get("type") == condition["type"]:
                conditions[index] = dict(condition)
                break
        else:
            conditions.append(dict(condition))
        self._changed("MODIFIED")

    def set_container(self, name: str, state: JSON, *, container_id: str, restarts: int) -> None:
        """Report a container status, as the kubelet does (``state``: ``{"running": {...}}``)."""
        assert self.pod is not None
        statuses: list[JSON] = self.pod["status"].setdefault("containerStatuses", [])
        status = {"name": name, "state": state, "containerID": container_id,
                  "restartCount": restarts, "ready": "running" in state}  # fmt: skip
        statuses[:] = [s for s in statuses if s.get("name") != name] + [status]
        self._changed("MODIFIED")

    def replace_pod(self, uid: str) -> None:
        """Delete the Pod and create one with the same name (a StatefulSet replacement)."""
        assert self.pod is not None
        pod = copy.deepcopy(self.pod)
        pod["metadata"]["uid"] = uid
        pod["status"]["conditions"] = []
        self._changed("DELETED")
        self.pod = pod
        self._changed("ADDED")

    def delete_pod(self) -> None:
        self._changed("DELETED")
        self.pod = None

    # --- the watch ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        assert self.pod is not None
        return int(self.pod["metadata"]["resourceVersion"])

    def _changed(self, kind: str) -> None:
        assert self.pod is not None
        if kind != "DELETED":
            version = self.resource_version + 1
            self.pod["metadata"]["resourceVersion"] = str(version)
        else:
            version = self.resource_version + 1
        self.history.append((version, kind, copy.deepcopy(self.pod)))
        if kind == "DELETED":
            self.pod["metadata"]["resourceVersion"] = str(version)
        self._change.set()
        self._change = asyncio.Event()

    def bookmark(self) -> None:
        """Every open watch gets a BOOKMARK at the current resourceVersion."""
        self.history.append((-1, "BOOKMARK", {}))
        self._change.set()
        self._change = asyncio.Event()

    def send_error(self, code: int, message: str) -> None:
        """Every open watch gets an ERROR event with a Status of ``code`` (and then ends)."""
        self.history.append((-2, "ERROR", _status(code, message, _REASONS.get(code, ""))))
        self._change.set()
        self._change = asyncio.Event()

    def compact(self) -> None:
        """Forget the history: a watch from any version seen so far gets 410 Gone."""
        self._oldest = self.resource_version + 1

    def end_watches(self) -> None:
        """Close every open watch stream, as the server does at a watch's timeout."""
        self._end_watches.set()
        self._end_watches = asyncio.Event()

    def _conditions(self) -> list[JSON]:
        assert self.pod is not None
        conditions: list[JSON] = self.pod["status"].setdefault("conditions", [])
        return conditions

    # --- container logs -----------------------------------------------------------------------

    def log(self, container: str, *lines: str | bytes, at: float | None = None) -> list[str]:
        """The current instance of ``container`` writes ``lines`` (stamped ``at``, default now,
        one nanosecond apart); returns their timestamps as served."""
        instances = self.container_logs.setdefault(container, [[]])
        base = round((time.time() if at is None else at) * NS)
        stamps = []
        for index, line in enumerate(lines):
            ns = base + index
            instances[-1].append((ns, line.encode() if isinstance(line, str) else line))
            stamps.append(log_stamp(ns))
        self._log_changed()
        return stamps

    def restart_container(self, container: str) -> None:
        """The current instance exits (its follow streams end) and a new one starts."""
        self.container_logs.setdefault(container, []).append([])
        self._log_changed()

    def end_log_streams(self) -> None:
        """End every open log stream, as a rotation (older kubelets) or a kubelet restart does."""
        self._end_logs.set()
        self._end_logs = asyncio.Event()

    def _log_changed(self) -> None:
        self._log_change.set()
        self._log_change = asyncio.Event()

    # --- what happened -----------------------------------------------------------------------

    def of(self, route: Route | None = None) -> list[Recorded]:
        return [r for r in self.requests if route is None or r.route is route]

    def served(self, route: Route | None = None) -> list[Recorded]:
        """Requests answered with success."""
        return [r for r in self.of(route) if r.status is not None and 200 <= r.status < 300]

    async def wait_for(
        self, route: Route | None = None, *, count: int = 1, within: float = 5.0
    ) -> list[Recorded]:
        """Wait until ``count`` requests on ``route`` have arrived (answered or not)."""
        async with asyncio.timeout(within):
            while len(self.of(route)) < count:
                arrived = self._arrived
                await arrived.wait()
        return self.of(route)

    # --- handlers ----------------------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.GET)
        return await self._answer(request, record, self._serve_get)

    async def _patch(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.PATCH)
        return await self._answer(request, record, self._serve_patch)

    async def _event(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.EVENT)
        return await self._answer(request, record, self._serve_event)

    async def _event_patch(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.EVENT_PATCH)
        return await self._answer(request, record, self._serve_event_patch)

    async def _log(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.LOG)
        answer = await self._answer(request, record, self._check_log)
        if answer.status != 200:
            return answer
        return await self._stream_log(request)

    def _check_log(self, request: web.Request, record: Recorded) -> web.Response:
        container = request.query.get("container", "")
        assert self.pod is not None
        names = [c["name"] for c in self.pod["spec"]["containers"]]
        if container not in names:
            return self._error(400, f"container {container} is not valid for pod {self.name}")
        accept = request.headers.get("Accept", "*/*")
        if not any(t in accept for t in ("*/*", "application/json")):  # as the API server
            return self._error(
                406,
                "only the following media types are accepted: application/json, "
                "application/yaml, application/vnd.kubernetes.protobuf",
            )
        if not self.container_logs.get(container):
            return self._error(
                400,
                f'container "{container}" in pod "{self.name}" is waiting to start: '
                "ContainerCreating",
            )
        return web.Response(status=200)

    async def _stream_log(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        instances = self.container_logs[query["container"]]
        instance, current = instances[-1], len(instances)
        follow = query.get("follow") in ("true", "True", "1")
        stamped = query.get("timestamps") in ("true", "True", "1")
        since_time = query.get("sinceTime")
        since = _whole_seconds(since_time) * NS if since_time else 0
        sent = max(0, len(instance) - int(query["tailLines"])) if "tailLines" in query else 0
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        self.open_logs += 1
        end = self._end_logs
        try:
            while not end.is_set():
                while sent < len(instance) and not self.logs_hang:
                    ns, text = instance[sent]
                    sent += 1
                    if ns >= since:
                        prefix = log_stamp(ns).encode() + b" " if stamped else b""
                        await response.write(prefix + text + b"\n")
                if (
                    not follow or len(instances) > current
                ):  # read to the end, or the instance exited
                    break
                change = self._log_change
                waiters = [asyncio.ensure_future(e.wait()) for e in (change, end)]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        except ConnectionResetError:
            pass
        finally:
            self.open_logs -= 1
        return response

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request, Route.WATCH)
        answer = await self._answer(request, record, self._check_watch)
        if answer.status != 200:
            return answer
        return await self._stream(request)

    def _check_watch(self, request: web.Request, record: Recorded) -> web.Response:
        query = request.query
        if query.get("watch") not in ("true", "1", "True"):
            return self._error(405, "only watches of one Pod are served here")
        if query.get("fieldSelector") != f"metadata.name={self.name}":
            return self._error(400, f"expected fieldSelector=metadata.name={self.name}")
        return web.Response(status=200)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        self.open_watches += 1
        try:
            async with asyncio.timeout(timeout):
                await self._send_events(response, since)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self.open_watches -= 1
        return response

    async def _send_events(self, response: web.StreamResponse, since: int) -> None:
        if since < self._oldest:
            await _send(response, "ERROR", _status(410, "too old resource version", "Expired"))
            return
        sent = next((i for i, (v, _, _) in enumerate(self.history) if v > since), len(self.history))
        end = self._end_watches
        while not end.is_set():
            while sent < len(self.history) and not self.watches_hang:
                version, kind, pod = self.history[sent]
                sent += 1
                if kind == "BOOKMARK":
                    meta = {"resourceVersion": str(self.resource_version)}
                    await _send(response, kind, {"kind": "Pod", "metadata": meta})
                elif kind == "ERROR":
                    await _send(response, kind, pod)
                    return
                elif version > since:
                    await _send(response, kind, pod)
            change = self._change
            waiters = [asyncio.ensure_future(e.wait()) for e in (change, end)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _record(self, request: web.Request, route: Route) -> Recorded:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        record = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            route=route,
            headers=dict(request.headers),
            body=body,
            at=asyncio.get_running_loop().time(),
        )
        self.requests.append(record)
        self._arrived.set()
        self._arrived = asyncio.Event()
        return record

    async def _answer(
        self, request: web.Request, record: Recorded, serve: Serve
    ) -> web.StreamResponse:
        queue = self._scripted[record.route]
        reply = queue.popleft() if queue else self._always.get(record.route)
        if reply is not None and reply.hang:
            await self._release.wait()  # the server stops; the client gave up long ago
            return self._error(503, "the fake API server is stopping")  # status stays None
        if reply is not None and reply.drop:
            assert request.transport is not None
            request.transport.abort()
            # Nothing reaches the client; aiohttp drops what the handler returns.
            return web.Response(status=500)
        response: web.Response
        if reply is not None:
            response = self._error(reply.status, reply.message or _REASONS.get(reply.status, ""))
            if reply.retry_after is not None:
                response.headers["Retry-After"] = reply.retry_after
        elif self.tokens is not None and record.authorization not in {
            f"Bearer {t}" for t in self.tokens
        }:
            response = self._error(401, "Unauthorized")
        elif request.match_info["namespace"] != self.namespace or (
            "name" in request.match_info
            and (self.pod is None or request.match_info["name"] != self.name)
        ):
            response = self._error(404, f'pods "{request.match_info.get("name")}" not found')
        else:
            response = serve(request, record)
        record.status = response.status
        return response

    @staticmethod
    def _error(code: int, message: str) -> web.Response:
        return web.json_response(_status(code, message, _REASONS.get(code, "")), status=code)

    def _serve_get(self, request: web.Request, record: Recorded) -> web.Response:
        return web.json_response(self.pod)

    def _serve_patch(self, request: web.Request, record: Recorded) -> web.Response:
        assert self.pod is not None
        if request.content_type != STRATEGIC_MERGE:
            return self._error(415, f"the body of the request was in an unknown format: "
                               f"accepted media types include: {STRATEGIC_MERGE}")  # fmt: skip
        patch = record.body
        if not isinstance(patch, dict):
            return self._error(400, "the request body is not a JSON object")
        wanted_uid = (patch.get("metadata") or {}).get("uid")
        uid = self.pod["metadata"]["uid"]
        if wanted_uid is not None and wanted_uid != uid:
            return self._error(
                409,
                f'Operation cannot be fulfilled on pods "{self.name}": Precondition failed: '
                f"UID in precondition: {wanted_uid}, UID in object meta: {uid}",
            )
        status_patch = patch.get("status") or {}
        pod = copy.deepcopy(self.pod)
        for key, value in status_patch.items():
            if key == "conditions":
                problem = _merge_conditions(pod["status"].setdefault("conditions", []), value)
                if problem:
                    return self._error(422, f'Pod "{self.name}" is invalid: {problem}')
            else:
                pod["status"][key] = _merge(pod["status"].get(key), value)
        if pod != self.pod:  # like etcd: no change, no new version
            self.pod = pod
            self._changed("MODIFIED")
        return web.json_response(self.pod)

    def _serve_event_patch(self, request: web.Request, record: Recorded) -> web.Response:
        name = request.match_info["event"]
        for event in self.events:
            if event["metadata"]["name"] == name:
                event.update(record.body if isinstance(record.body, dict) else {})
                return web.json_response(event)
        return self._error(404, f'events "{name}" not found')

    def _serve_event(self, request: web.Request, record: Recorded) -> web.Response:
        event = dict(record.body) if isinstance(record.body, dict) else {}
        meta = dict(event.get("metadata") or {})
        meta["name"] = f"{meta.get('generateName', 'event.')}{next(self._names):05d}"
        meta["namespace"] = self.namespace
        event["metadata"] = meta
        self.events.append(event)
        return web.json_response(event, status=201)


NS = 1_000_000_000


def log_stamp(ns: int) -> str:
    """The kubelet's timestamp of a log line (RFC3339NanoFixed, UTC)."""
    seconds, fraction = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _whole_seconds(rfc3339: str) -> int:
    """What the API server keeps of ``sinceTime``: the whole seconds (fractions are accepted)."""
    whole = rfc3339[:19]
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    zone = rfc3339[19:].lstrip(".0123456789")
    if zone not in ("Z", ""):
        sign = -1 if zone[0] == "-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


async def _send(response: web.StreamResponse, kind: str, obj: JSON) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def _merge(old: Any, new: Any) -> Any:
    """Strategic merge for plain maps: recursive, ``null`` deletes, lists are replaced."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return copy.deepcopy(new)
    merged = dict(old)
    for key, value in new.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(old.get(key), value)
    return merged


def _merge_conditions(conditions: list[JSON], patch: Any) -> str | None:
    """Merge by ``type`` (patchMergeKey of PodStatus.conditions); a problem message or None."""
    if not isinstance(patch, list):
        return "status.conditions: must be a list"
    for index, item in enumerate(patch):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            return f"status.conditions[{index}].type: Required value"
        for existing_index, existing in enumerate(conditions):
            if existing.get("type") == item["type"]:
                conditions[existing_index] = _merge(existing, item)
                break
        else:
            conditions.append({k: v for k, v in item.items() if v is not None})
    return None
