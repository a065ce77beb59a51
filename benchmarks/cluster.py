"""The cluster side of the benchmarks: Pods in bulk, bound tokens, and a streaming observer.

:class:`Observer` holds two streaming watches with the admin certificate (raw ``?watch=1`` GETs
over aiohttp), one on the Pods and one on the EndpointSlices of a namespace, and records, with the
local receive time of each event, every change of each Pod's gate condition, of its ``Ready``
condition (the kubelet's) and of its endpoint's ``ready`` flag. Waiting for "the first change to X
at or after t0" is then exact to the moment the event arrived, however late the waiter looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import JSON
from tests.harness.agent import bound_token_dir
from tests.harness.cluster import SERVER, Component, ControlPlane
from tests.harness.kube import ApiError, condition_status
from tests.harness.workloads import (
    AGENT_SA,
    GATE,
    PodRef,
    create_agent_rbac,
    create_namespace,
    create_pod,
    create_service,
    delete_namespace,
)

GATE_KEY = "gate"
READY_KEY = "ready"
ENDPOINT_KEY = "endpoint"
KEYS = (GATE_KEY, READY_KEY, ENDPOINT_KEY)
Value = str | None  # "True", "False" or None (no such condition / endpoint not listed)


# --- the control plane ---------------------------------------------------------------------------

#: A real kubelet's client limits (KubeletConfiguration kubeAPIQPS / kubeAPIBurst defaults since
#: Kubernetes 1.27). kubemark's hollow kubelet defaults to 10 / 20, and with those the hollow
#: kubelet, not the agent, dominates how late Ready follows the gate once a few dozen Pods change.
KUBELET_QPS = 50
KUBELET_BURST = 100


class BenchControlPlane(ControlPlane):
    """tests/harness's control plane, with the hollow kubelet's API client limits of a real one."""

    def _components(self) -> Sequence[Component]:
        components = super()._components()
        for component in components:
            if component.name == "kubemark":
                component.argv += [
                    f"--kube-api-qps={KUBELET_QPS}",
                    f"--kube-api-burst={KUBELET_BURST}",
                ]
        return components


# --- provisioning (blocking: run these in a thread) ---------------------------------------------


def make_namespace(plane: ControlPlane, name: str) -> str:
    """A namespace with the agent's ServiceAccount, Role and RoleBinding (examples/rbac)."""
    create_namespace(plane, name)
    create_agent_rbac(plane.admin, name)
    return name


def create_pods(
    plane: ControlPlane,
    namespace: str,
    names: Sequence[str],
    *,
    labels: Mapping[str, str],
    services: bool = False,
    threads: int = 12,
    timeout: float = 600.0,
) -> list[PodRef]:
    """Create Pods (with the readiness gate, on the hollow node, as the agent's ServiceAccount) in
    parallel, optionally a Service per Pod named like it, and wait until all run."""

    def one(name: str) -> PodRef:
        ref = create_pod(
            plane.admin, namespace, name, labels=labels, service_account=AGENT_SA,
            wait_running=False,
        )  # fmt: skip
        if services:
            create_service(plane.admin, namespace, name, {"app": name})
        return ref

    with ThreadPoolExecutor(threads) as pool:
        refs = list(pool.map(one, names))
    wait_running(plane, namespace, labels, len(names), timeout=timeout)
    return refs


def wait_running(
    plane: ControlPlane, namespace: str, labels: Mapping[str, str], count: int, *, timeout: float
) -> None:
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    deadline = time.monotonic() + timeout
    while True:
        pods = plane.admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)
        running = sum(
            1 for pod in pods.get("items", []) if condition_status(pod, "ContainersReady") == "True"
        )
        if running >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {running}/{count} Pods in {namespace} run after {timeout} s")
        time.sleep(0.5)


def token_dirs(
    plane: ControlPlane, pods: Sequence[PodRef], base: Path, *, threads: int = 12
) -> list[Path]:
    """A directory like /var/run/secrets/kubernetes.io/serviceaccount per Pod, its token bound to
    that Pod (TokenRequest with boundObjectRef)."""

    def one(item: tuple[int, PodRef]) -> Path:
        index, pod = item
        return bound_token_dir(plane, pod, base / f"sa-{pod.name}-{index}").path

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, enumerate(pods)))


def drop_namespace(plane: ControlPlane, name: str) -> None:
    with contextlib.suppress(ApiError, OSError):
        delete_namespace(plane, name)


def set_gate(plane: ControlPlane, pod: PodRef, status: str, reason: str = "BenchmarkReset") -> None:
    """Write the gate condition as the administrator (resetting the shell loop's lanes)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plane.admin.patch_pod_status(
        pod.namespace,
        pod.name,
        {"status": {"conditions": [
            {"type": GATE, "status": status, "reason": reason, "lastTransitionTime": stamp}
        ]}},
    )  # fmt: skip


def audit_sentinel(plane: ControlPlane, name: str) -> None:
    """A request that the audit policy records (a GET of a Pod that does not exist)."""
    with contextlib.suppress(ApiError):
        plane.admin.get(f"/api/v1/namespaces/default/pods/{name}")


def kube_version(plane: ControlPlane) -> str:
    try:
        return str(plane.admin.get("/version").get("gitVersion", "unknown"))
    except (ApiError, OSError):
        return "unknown"


def apiserver_requests_total(plane: ControlPlane) -> float:
    """The sum of ``apiserver_request_total`` over every label set (all clients, all resources)."""
    total = 0.0
    for line in plane.admin.raw("/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- the observer -------------------------------------------------------------------------------


def admin_ssl(plane: ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
    context.load_cert_chain(str(plane.admin_cert.cert), str(plane.admin_cert.key))
    return context


class Observer:
    """Streaming watches on the Pods and EndpointSlices of ``namespace``; see the module doc."""

    def __init__(self, plane: ControlPlane, namespace: str, gate: str = GATE) -> None:
        self._ssl = admin_ssl(plane)
        self.namespace = namespace
        self.gate = gate
        self.current: dict[tuple[str, str], Value] = {}
        self.history: dict[tuple[str, str], list[tuple[float, Value]]] = {}
        self._changed: dict[tuple[str, str], asyncio.Event] = {}
        self._slices: dict[str, dict[str, Value]] = {}
        self.events = 0
        self.reconnects = 0

    # --- running ---

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Both watches until cancelled; ``started`` is set once both have listed."""
        listed = [asyncio.Event(), asyncio.Event()]
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
            ns = self.namespace
            tg.create_task(
                self._watch(session, f"/api/v1/namespaces/{ns}/pods", self._on_pod, listed[0])
            )
            tg.create_task(
                self._watch(
                    session,
                    f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                    self._on_slice,
                    listed[1],
                )
            )
            await asyncio.gather(*(e.wait() for e in listed))
            if started is not None:
                started.set()

    async def _watch(
        self,
        session: aiohttp.ClientSession,
        path: str,
        handle: Callable[[str, JSON, float], None],
        listed: asyncio.Event,
    ) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    async with session.get(SERVER + path) as response:
                        response.raise_for_status()
                        listing = await response.json()
                    now = time.time()
                    for item in listing.get("items") or []:
                        handle("ADDED", item, now)
                    version = listing["metadata"]["resourceVersion"]
                    listed.set()
                version = await self._stream(session, path, version, handle)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def _stream(
        self,
        session: aiohttp.ClientSession,
        path: str,
        version: str,
        handle: Callable[[str, JSON, float], None],
    ) -> str | None:
        """One watch request; returns the resourceVersion to resume from (None: list again)."""
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(SERVER + path, params=params, timeout=timeout) as response:
            if response.status == 410:
                return None
            response.raise_for_status()
            buffer = b""
            async for chunk in response.content.iter_any():
                now = time.time()  # the receive time of every event completed by this chunk
                buffer += chunk
                while (cut := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:cut], buffer[cut + 1 :]
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        return None
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self.events += 1
                        handle(str(kind), obj, now)
        self.reconnects += 1
        return version

    # --- events ---

    def _on_pod(self, kind: str, pod: JSON, now: float) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self._set(name, GATE_KEY, None, now)
            self._set(name, READY_KEY, None, now)
            return
        self._set(name, GATE_KEY, condition_status(pod, self.gate), now)
        self._set(name, READY_KEY, condition_status(pod, "Ready"), now)

    def _on_slice(self, kind: str, endpoint_slice: JSON, now: float) -> None:
        slice_name = endpoint_slice["metadata"]["name"]
        before = self._slices.pop(slice_name, {})
        after: dict[str, Value] = {}
        if kind != "DELETED":
            for endpoint in endpoint_slice.get("endpoints") or []:
                ref = endpoint.get("targetRef") or {}
                if ref.get("kind") == "Pod" and ref.get("name"):
                    ready = (endpoint.get("conditions") or {}).get("ready")
                    after[ref["name"]] = "True" if ready else "False"
            self._slices[slice_name] = after
        for pod in before.keys() - after.keys():
            self._set(pod, ENDPOINT_KEY, None, now)
        for pod, value in after.items():
            self._set(pod, ENDPOINT_KEY, value, now)

    def _set(self, pod: str, key: str, value: Value, now: float) -> None:
        slot = (pod, key)
        if slot in self.current and self.current[slot] == value:
            return
        self.current[slot] = value
        self.history.setdefault(slot, []).append((now, value))
        event = self._changed.pop(slot, None)
        if event is not None:
            event.set()

    # --- queries ---

    def value(self, pod: str, key: str) -> Value:
        return self.current.get((pod, key))

    def first_change(self, pod: str, key: str, value: Value, after: float) -> float | None:
        for at, seen in self.history.get((pod, key), []):
            if at >= after and seen == value:
                return at
        return None

    async def _next_change(self, pod: str, key: str, deadline: float) -> bool:
        event = self._changed.setdefault((pod, key), asyncio.Event())
        try:
            async with asyncio.timeout_at(deadline):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def wait_change(
        self, pod: str, key: str, value: Value, *, after: float, deadline: float
    ) -> float | None:
        """The receive time of the first change of ``key`` to ``value`` at or after ``after``
        (epoch seconds); ``None`` if none came before ``deadline`` (loop time)."""
        while True:
            found = self.first_change(pod, key, value, after)
            if found is not None:
                return found
            if not await self._next_change(pod, key, deadline):
                return self.first_change(pod, key, value, after)

    async def wait_state(
        self, pod: str, wanted: Mapping[str, Iterable[Value]], *, deadline: float
    ) -> bool:
        """Until every ``key`` of ``pod`` holds one of its wanted values; False at ``deadline``."""
        while True:
            pending = [k for k, ok in wanted.items() if self.value(pod, k) not in set(ok)]
            if not pending:
                return True
            if not await self._next_change(pod, pending[0], deadline):
                return False


NOT_READY: Mapping[str, tuple[Value, ...]] = {
    GATE_KEY: ("False",),
    READY_KEY: ("False",),
    ENDPOINT_KEY: ("False", None),
}


def describe_pods(observer: Observer, pods: Iterable[str]) -> dict[str, Any]:
    return {pod: {k: observer.value(pod, k) for k in KEYS} for pod in pods}
