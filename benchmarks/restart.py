"""7. Application restarts on the real node: from the kubelet's status update to the gate False.

The real node (tests/harness/node.py: kubelet, containerd, runc) runs Pods of an application (a
shell program in Debian's image that is ready 2 s after it starts and says so with a marker file on
a shared emptyDir) and the agent from the image built from ./Dockerfile (one file check on the
marker, the shipped defaults otherwise, ``GATE_EVENTS=false``). Once a Pod's gate is True, the
application's process is killed (SIGKILL, as the OOM killer or a crash would): the kubelet sees it
die and restarts the container at once (the first restart has no back-off).

Each trial is timed from the first status update of the Pod that shows the old instance gone or a
new one (the kubelet's), as the benchmark's own watch receives it, to the first update with the
gate False. In between the Pod may still say Ready: the kubelet computes Ready from the containers
(an application without a readinessProbe is ready as soon as it runs) and the gate as it last saw
it, so until the agent's write lands, a restarted instance can be Ready for a moment. That window
is measured too: how often the watch saw Ready True with the new instance before the gate False,
and for how long.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmarks.cluster import Observer
from benchmarks.common import JSON, summary
from benchmarks.nodepods import APP, app_and_agent_pod
from tests.harness.cluster import ControlPlane
from tests.harness.kube import ApiError, condition_status, wait_for
from tests.harness.node import RealNode
from tests.harness.workloads import GATE

SCRIPT = "trap 'exit 0' TERM; sleep 2; touch /shared/ready; while :; do sleep 1; done"


@dataclass(slots=True)
class Seen:
    at: float
    container_id: str
    running: bool
    gate: str | None
    ready: str | None


@dataclass(slots=True)
class Trial:
    pod: str
    killed_at: float
    old_id: str
    updated: float | None = None  # the kubelet's first update after the kill
    gate_false: float | None = None
    ready_with_new: list[float] = field(default_factory=list)  # Ready True, new instance, gate True


class RestartObserver(Observer):
    """The benchmark Observer, also keeping every event's app container state."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        super().__init__(plane, namespace)
        self.seen: dict[str, list[Seen]] = {}

    def _on_pod(self, kind: str, pod: JSON, now: float) -> None:
        super()._on_pod(kind, pod, now)
        if kind == "DELETED":
            return
        statuses = pod.get("status", {}).get("containerStatuses") or []
        app: JSON = next((s for s in statuses if s.get("name") == APP), {})
        self.seen.setdefault(pod["metadata"]["name"], []).append(
            Seen(
                at=now,
                container_id=str(app.get("containerID", "")),
                running="running" in (app.get("state") or {}),
                gate=condition_status(pod, GATE),
                ready=condition_status(pod, "Ready"),
            )
        )


def pod_manifest(node: RealNode, name: str) -> JSON:
    settings = {
        "GATE_CONDITION_TYPE": GATE,
        "GATE_EVENTS": "false",
        "CHECK_APP_KIND": "file",
        "CHECK_APP_PATH": "/shared/ready",
    }
    return app_and_agent_pod(
        node, name, bench="restart", gate=GATE, script=SCRIPT, settings=settings
    )


class RestartBench:
    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        workdir: Path,
        *,
        smoke: bool,
        out: TextIO = sys.stderr,
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.workdir = workdir / "restart"
        self.batches = 1 if smoke else 4
        self.batch = 2 if smoke else 5
        self.out = out

    def say(self, text: str) -> None:
        print(f"[restart] {text}", file=self.out, flush=True)

    async def run(self) -> JSON:
        with RealNode.started(self.plane, log=self.out) as node:
            observer = RestartObserver(self.plane, self.namespace)
            listed = asyncio.Event()
            watching = asyncio.create_task(observer.run(listed))
            try:
                await asyncio.wait_for(listed.wait(), 30)
                trials: list[Trial] = []
                for batch in range(self.batches):
                    trials += await self._batch(node, observer, batch)
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
        return self._report(trials)

    async def _batch(self, node: RealNode, observer: RestartObserver, batch: int) -> list[Trial]:
        names = [f"restart-{batch}-{i}" for i in range(self.batch)]
        for name in names:
            await asyncio.to_thread(
                self.plane.admin.post,
                f"/api/v1/namespaces/{self.namespace}/pods",
                pod_manifest(node, name),
            )
        trials = []
        for name in names:
            await asyncio.to_thread(self._wait_true, name)
        for name in names:
            pod = await asyncio.to_thread(self.plane.admin.pod, self.namespace, name)
            old = _app_id(pod)
            killed = time.time()
            await asyncio.to_thread(
                node.ctr, "tasks", "kill", "--signal", "SIGKILL", old.removeprefix("containerd://")
            )
            trials.append(Trial(pod=name, killed_at=killed, old_id=old))
            await asyncio.sleep(0.5)
        await asyncio.sleep(4)  # every restarted instance has touched its marker again by now
        for trial in trials:
            _measure(trial, observer.seen.get(trial.pod, []))
        for name in names:
            with contextlib.suppress(ApiError):
                await asyncio.to_thread(
                    self.plane.admin.delete, f"/api/v1/namespaces/{self.namespace}/pods/{name}"
                )
        self.say(
            f"batch {batch}: "
            + ", ".join(f"{_ms(t.gate_false, t.updated)}" for t in trials)
            + " (kubelet update -> gate False)"
        )
        return trials

    def _wait_true(self, name: str) -> None:
        wait_for(
            f"{name}: gate True",
            lambda: condition_status(self.plane.admin.pod(self.namespace, name), GATE) == "True",
            timeout=180,
            interval=0.2,
        )

    def _report(self, trials: list[Trial]) -> JSON:
        measured = [t for t in trials if t.updated is not None and t.gate_false is not None]
        latencies = [t.gate_false - t.updated for t in measured]  # type: ignore[operator]
        windows = [t.gate_false - min(t.ready_with_new) for t in measured  # type: ignore[operator]
                   if t.ready_with_new]  # fmt: skip
        return {
            "trials": len(trials),
            "measured": len(measured),
            "kubelet_update_to_gate_false": summary(latencies),
            "kill_to_kubelet_update": summary(
                [t.updated - t.killed_at for t in measured]  # type: ignore[operator]
            ),
            "ready_with_new_instance": {
                "trials": sum(1 for t in measured if t.ready_with_new),
                "updates": sum(len(t.ready_with_new) for t in measured),
                "longest_seconds": max(windows, default=0.0),
            },
        }


def _app_id(pod: JSON) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return str(next(s for s in statuses if s["name"] == APP)["containerID"])


def _measure(trial: Trial, seen: list[Seen]) -> None:
    for event in seen:
        if event.at < trial.killed_at:
            continue
        changed = event.container_id != trial.old_id or not event.running
        if trial.updated is None and changed:
            trial.updated = event.at
        if trial.updated is not None and trial.gate_false is None:
            if event.gate == "False":
                trial.gate_false = event.at
            elif event.ready == "True" and event.running and event.container_id != trial.old_id:
                trial.ready_with_new.append(event.at)


def _ms(end: float | None, start: float | None) -> str:
    return "n/a" if end is None or start is None else f"{(end - start) * 1000:.0f} ms"
