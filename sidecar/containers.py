"""The application containers a check follows, and their lifecycle as the Pod's status reports it.

No I/O: the Pod observer feeds every Pod it reads or watches into :meth:`Containers.update`; the
prober asks a :class:`Following` view what the containers of its check are doing.

Which containers a check follows: ``CHECK_<ID>_CONTAINER`` (one name), else every container in
``spec.containers`` except the agent's own (``GATE_CONTAINER_NAME``). Native sidecars
(``initContainers`` with ``restartPolicy: Always``) are followed only when named; their status is
in ``initContainerStatuses``.

An *instance* of a container is identified, as the kubelet's prober does, by its container ID (and
its restart count, which changes with it). Its ``startedAt`` comes from
``state.running.startedAt``, an RFC 3339 time in whole seconds.
"""

from __future__ import annotations

import asyncio
import calendar
import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


class Phase(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One container as the Pod's status shows it now."""

    name: str
    container_id: str | None
    restart_count: int
    phase: Phase
    reason: str | None = None  # waiting or terminated reason: CrashLoopBackOff, Error, ...
    started_at: float | None = None  # epoch seconds (whole), while running
    exit_code: int | None = None

    @property
    def key(self) -> tuple[str, str | None, int]:
        return (self.name, self.container_id, self.restart_count)

    def not_running(self) -> str:
        """Why it is not running, e.g. ``container app is not running: CrashLoopBackOff (3
        restarts)``."""
        why = self.reason or str(self.phase)
        if self.phase is Phase.TERMINATED and self.exit_code is not None:
            why = f"{why}, exit code {self.exit_code}"
        count = self.restart_count
        restarts = f" ({count} restart{'s' if count != 1 else ''})" if count else ""
        return f"container {self.name} is not running: {why}{restarts}"

    def describe(self) -> JSON:
        return {
            "container": self.name,
            "state": str(self.phase),
            "reason": self.reason,
            "restart_count": self.restart_count,
            "started_at": _rfc3339(self.started_at),
            "container_id": self.container_id,
        }


class FollowKind(StrEnum):
    UNKNOWN = "unknown"  # no Pod seen yet (or nothing to follow): probe as without the API
    MISSING = "missing"  # a named container that the Pod does not have
    NOT_RUNNING = "not_running"
    RUNNING = "running"


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowState:
    kind: FollowKind
    message: str = ""
    instances: tuple[Instance, ...] = ()

    @property
    def keys(self) -> tuple[tuple[str, str | None, int], ...]:
        return tuple(i.key for i in self.instances)

    @property
    def started_at(self) -> float | None:
        """When the newest of the followed instances started (epoch seconds)."""
        times = [i.started_at for i in self.instances if i.started_at is not None]
        return max(times) if times else None


class Containers:
    """The latest container statuses of our Pod, with change notification.

    ``on_restart(name)`` is called for each new instance of a container that had been seen running
    under another container ID before (a restart by the kubelet).
    """

    def __init__(self, own_name: str, on_restart: Callable[[str], None] | None = None) -> None:
        self.own_name = own_name
        self._on_restart = on_restart or (lambda _: None)
        self._running_ids: dict[str, str | None] = {}
        self._spec_containers: tuple[str, ...] = ()
        self._native_sidecars: tuple[str, ...] = ()
        self._instances: dict[str, Instance] = {}
        self._seen = False
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def seen(self) -> bool:
        return self._seen

    @property
    def version(self) -> int:
        return self._version

    @property
    def names(self) -> tuple[str, ...]:
        return self._spec_containers + self._native_sidecars

    def update(self, pod: Mapping[str, Any]) -> bool:
        """Take in a Pod; True (and waiters woken) when anything a check follows changed."""
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        containers = _names(spec.get("containers"))
        sidecars = tuple(
            c["name"]
            for c in spec.get("initContainers") or []
            if isinstance(c, dict) and c.get("restartPolicy") == "Always" and "name" in c
        )
        instances = {
            i.name: i
            for i in _instances(status.get("containerStatuses"))
            + _instances(status.get("initContainerStatuses"))
        }
        new = (containers, sidecars, instances)
        if self._seen and new == (self._spec_containers, self._native_sidecars, self._instances):
            return False
        self._spec_containers, self._native_sidecars, self._instances = new
        self._count_restarts(instances)
        self._seen = True
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_changed(self, seen_version: int) -> int:
        while self._version == seen_version:
            await self._changed.wait()
        return self._version

    def _count_restarts(self, instances: Mapping[str, Instance]) -> None:
        for name, instance in instances.items():
            if instance.phase is not Phase.RUNNING:
                continue
            before = self._running_ids.get(name, instance.container_id)
            self._running_ids[name] = instance.container_id
            if before != instance.container_id:
                self._on_restart(name)

    def follow(self, name: str | None) -> Following:
        return Following(self, name)

    def targets(self, name: str | None) -> tuple[str, ...] | str:
        """The names a check follows, or why there are none (a named container not in the Pod)."""
        if name is not None:
            if name in self.names:
                return (name,)
            guess = difflib.get_close_matches(name, self.names, n=1)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            present = ", ".join(self.names) or "none"
            return f"container {name} is not in this Pod (its containers: {present}){hint}"
        return tuple(c for c in self._spec_containers if c != self.own_name)

    def state(self, name: str | None) -> FollowState:
        if not self._seen:
            return FollowState(kind=FollowKind.UNKNOWN)
        targets = self.targets(name)
        if isinstance(targets, str):
            return FollowState(kind=FollowKind.MISSING, message=targets)
        if not targets:
            return FollowState(kind=FollowKind.UNKNOWN)
        instances = tuple(
            self._instances.get(n) or Instance(name=n, container_id=None, restart_count=0,
                                               phase=Phase.WAITING, reason="no status yet")
            for n in targets
        )  # fmt: skip
        stopped = [i for i in instances if i.phase is not Phase.RUNNING]
        if stopped:
            return FollowState(
                kind=FollowKind.NOT_RUNNING,
                message="; ".join(i.not_running() for i in stopped),
                instances=instances,
            )
        return FollowState(kind=FollowKind.RUNNING, instances=instances)

    def own_container_known(self) -> bool:
        return self.own_name in self.names


@dataclass(frozen=True, slots=True)
class Following:
    """What one check follows: ``name`` (``CHECK_<ID>_CONTAINER``) or the default set."""

    containers: Containers
    name: str | None

    def state(self) -> FollowState:
        return self.containers.state(self.name)

    @property
    def version(self) -> int:
        return self.containers.version

    async def wait_changed(self, seen_version: int) -> int:
        return await self.containers.wait_changed(seen_version)


def _names(items: Any) -> tuple[str, ...]:
    return tuple(c["name"] for c in items or [] if isinstance(c, dict) and "name" in c)


def _instances(items: Any) -> list[Instance]:
    found = []
    for raw in items or []:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            found.append(_instance(raw))
    return found


def _instance(raw: Mapping[str, Any]) -> Instance:
    state = raw.get("state") or {}
    running, waiting, terminated = (state.get(k) for k in ("running", "waiting", "terminated"))
    base = {
        "name": raw["name"],
        "container_id": raw.get("containerID") or None,
        "restart_count": int(raw.get("restartCount") or 0),
    }
    if isinstance(running, dict):
        started = parse_time(running.get("startedAt"))
        return Instance(**base, phase=Phase.RUNNING, started_at=started)
    if isinstance(terminated, dict):
        code = terminated.get("exitCode")
        return Instance(
            **base,
            phase=Phase.TERMINATED,
            reason=terminated.get("reason") or None,
            exit_code=code if isinstance(code, int) else None,
        )
    reason = waiting.get("reason") if isinstance(waiting, dict) else None
    return Instance(**base, phase=Phase.WAITING, reason=reason or None)


def parse_time(value: object) -> float | None:
    """An RFC 3339 time as Kubernetes writes it (``2026-12-01T10:00:00Z``) in epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def describe_all(instances: Iterable[Instance]) -> list[JSON]:
    return [i.describe() for i in instances]
