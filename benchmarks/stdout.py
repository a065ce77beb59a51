"""8. A log check of a container's stdout next to one of a log file, on the real node (issue 15).

The real node (tests/harness/node.py) runs pairs of Pods of a shell program in Debian's image
that, on cue (a file the benchmark creates on the Pod's emptyDir), writes one line to its stdout and
the same line to a log file on that emptyDir; its next cue writes a fail line the same way. The
agent (the image built from ./Dockerfile, shipped defaults, ``GATE_EVENTS=false``) has one log
check: in the ``stdout-<i>`` Pod it follows the container's stdout through the API
(``CHECK_OUT_CONTAINER=app``: the kubelet writes the output to its log file, the API server
streams it from the kubelet), in the ``file-<i>`` Pod the file on the shared volume (the baseline).

Each trial cues both Pods of a pair at once and times each from the cue to the first Pod update,
as the benchmark's own watch receives it, with its gate True. Both include the application's own
wait for the cue (a 20 ms poll), so the difference is the price of the API path. Trials start once
every Pod's gate is False (the agent is up and has written its first verdict).
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
from tests.harness.workloads import create_pod_logs_rbac

OUT_GATE = "example.com/stdout-ready"
FILE_GATE = "example.com/file-ready"
GATES = (OUT_GATE, FILE_GATE)
SCRIPT = """trap 'exit 0' TERM
say() { echo "$1"; echo "$1" >> /shared/app.log; }
while :; do
    if [ -e /shared/up ]; then rm -f /shared/up; say "Server startup in 12 ms"; fi
    if [ -e /shared/down ]; then rm -f /shared/down; say "SEVERE down"; fi
    sleep 0.02
done
"""


@dataclass(slots=True)
class Trial:
    pod: str
    cued_at: float
    true_at: dict[str, float] = field(default_factory=dict)


class GatesObserver(Observer):
    """The benchmark Observer, also keeping when each Pod showed each gate's status."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        super().__init__(plane, namespace)
        self.seen: dict[str, list[tuple[float, dict[str, str | None]]]] = {}

    def _on_pod(self, kind: str, pod: JSON, now: float) -> None:
        super()._on_pod(kind, pod, now)
        if kind != "DELETED":
            statuses = {gate: condition_status(pod, gate) for gate in GATES}  # None: not this Pod's
            self.seen.setdefault(pod["metadata"]["name"], []).append((now, statuses))


def pod_manifest(node: RealNode, name: str, gate: str) -> JSON:
    settings = {
        "GATE_EVENTS": "false",
        "CHECK_APP_KIND": "log",
        "CHECK_APP_GATE": gate,
        "CHECK_APP_PATTERN": "Server startup in",
        "CHECK_APP_FAIL_PATTERN": "SEVERE",
        "CHECK_APP_FAILURE_THRESHOLD": "1",
        "CHECK_APP_CONTAINER": APP,
    }
    if gate == FILE_GATE:
        settings["CHECK_APP_PATH"] = "/shared/app.log"
    return app_and_agent_pod(
        node, name, bench="stdout", gate=gate, script=SCRIPT, settings=settings
    )


class StdoutBench:
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
        self.workdir = workdir / "stdout"
        self.pods = 2 if smoke else 3  # pairs
        self.rounds = 3 if smoke else 10
        self.out = out

    def say(self, text: str) -> None:
        print(f"[stdout] {text}", file=self.out, flush=True)

    async def run(self) -> JSON:
        await asyncio.to_thread(create_pod_logs_rbac, self.plane.admin, self.namespace)
        with RealNode.started(self.plane, log=self.out) as node:
            observer = GatesObserver(self.plane, self.namespace)
            listed = asyncio.Event()
            watching = asyncio.create_task(observer.run(listed))
            names = [f"{kind}-{i}" for i in range(self.pods) for kind in ("stdout", "file")]
            try:
                await asyncio.wait_for(listed.wait(), 30)
                trials = await self._trials(node, observer, names)
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
                for name in names:
                    with contextlib.suppress(ApiError):
                        await asyncio.to_thread(
                            self.plane.admin.delete,
                            f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                        )
                await asyncio.to_thread(self._wait_gone, names)
        return self._report(trials)

    async def _trials(
        self, node: RealNode, observer: GatesObserver, names: list[str]
    ) -> list[Trial]:
        pods: dict[str, JSON] = {}
        for name in names:
            gate = OUT_GATE if name.startswith("stdout") else FILE_GATE
            await asyncio.to_thread(
                self.plane.admin.post,
                f"/api/v1/namespaces/{self.namespace}/pods",
                pod_manifest(node, name, gate),
            )
        for name in names:
            pods[name] = await asyncio.to_thread(self._wait_running, name)
            await asyncio.to_thread(self._wait_gate, name, "False")
        pairs = [(f"stdout-{i}", f"file-{i}") for i in range(self.pods)]
        trials: list[Trial] = []
        for round_ in range(self.rounds):
            for pair in pairs:
                cued = time.time()
                for name in pair:
                    _cue(node, pods[name], "up")
                for name in pair:
                    await asyncio.to_thread(self._wait_gate, name, "True")
                trial = Trial(pod=pair[0], cued_at=cued)
                for name in pair:
                    _measure(trial, observer.seen.get(name, []))
                trials.append(trial)
                for name in pair:
                    _cue(node, pods[name], "down")
                for name in pair:
                    await asyncio.to_thread(self._wait_gate, name, "False")
            self.say(
                f"round {round_}: "
                + ", ".join(
                    "/".join(_ms(t.true_at.get(g), t.cued_at) for g in GATES)
                    for t in trials[-len(pairs) :]
                )
                + " (cue -> stdout gate / file gate True)"
            )
        return trials

    def _wait_running(self, name: str) -> JSON:
        def running() -> JSON | None:
            pod = self.plane.admin.pod(self.namespace, name)
            statuses = pod.get("status", {}).get("containerStatuses") or []
            up = len(statuses) == 2 and all("running" in s.get("state", {}) for s in statuses)
            return pod if up else None

        pod: JSON = wait_for(f"{name}: running", running, timeout=180, interval=0.2)
        return pod

    def _wait_gate(self, name: str, status: str) -> None:
        gate = OUT_GATE if name.startswith("stdout") else FILE_GATE

        def reached() -> bool:
            return condition_status(self.plane.admin.pod(self.namespace, name), gate) == status

        wait_for(f"{name}: gate {status}", reached, timeout=60, interval=0.05)

    def _wait_gone(self, names: list[str]) -> None:
        def gone() -> bool:
            items = self.plane.admin.get(
                f"/api/v1/namespaces/{self.namespace}/pods", labelSelector="bench=stdout"
            )["items"]
            return not items

        wait_for("the stdout benchmark's Pods gone", gone, timeout=60, interval=0.5)

    def _report(self, trials: list[Trial]) -> JSON:
        measured = [t for t in trials if all(g in t.true_at for g in GATES)]
        out = [t.true_at[OUT_GATE] - t.cued_at for t in measured]
        file = [t.true_at[FILE_GATE] - t.cued_at for t in measured]
        return {
            "trials": len(trials),
            "measured": len(measured),
            "stdout_line_to_true": summary(out),
            "file_line_to_true": summary(file),
            "stdout_minus_file": summary([a - b for a, b in zip(out, file, strict=True)]),
        }


def _cue(node: RealNode, pod: JSON, name: str) -> None:
    uid = pod["metadata"]["uid"]
    node.node_path(
        f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/shared/{name}"
    ).write_text("")


def _measure(trial: Trial, seen: list[tuple[float, dict[str, str | None]]]) -> None:
    for at, statuses in seen:
        if at < trial.cued_at:
            continue
        for gate in GATES:
            if gate not in trial.true_at and statuses[gate] == "True":
                trial.true_at[gate] = at


def _ms(end: float | None, start: float) -> str:
    return "n/a" if end is None else f"{(end - start) * 1000:.0f} ms"
