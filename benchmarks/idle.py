"""2. API cost and 3. footprint: agents at rest, counted by the API server and by /proc.

Start-up
    ``startups`` times in a row, a fresh agent (three checks: log, file, tcp; all passing) on a
    fresh Pod (no condition yet): from just before ``Popen`` to the agent's first
    ``check_state_changed`` and first ``gate_written`` log entries (their ISO timestamps).

The idle window (``window`` seconds; all of these run side by side)
    ``steady``: three checks, app ready, ``GATE_RESYNC_SECONDS=resync`` — its requests in the window
    as the API server's audit log records them (user = the agent's ServiceAccount, pod-name claim =
    its Pod), extrapolated to one hour.
    ``footprint``: three checks, default settings — VmRSS and utime+stime over the whole window
    (at least 60 s in the full run; utime+stime count 10 ms ticks, so the scheduler's nanosecond
    ``schedstat`` is reported next to it). ``periodic``: the same with ``GATE_EVENT_DRIVEN=false``,
    to show what the event-driven wake-ups cost at rest.
    Two floors: ``python -c 'import os; os.read(0, 1)'`` (nothing imported beyond the interpreter's
    start-up) and ``python -c 'import kubernetes_asyncio, aiohttp, os; os.read(0, 1)'``.
    ``flaky``: three checks with the default ``GATE_FAILURE_THRESHOLD`` (3), whose tcp app drops
    its port for 1.5 s every 10 s: at most one failed probe in a row (the period is 2 s), which by
    kubelet semantics must not change the gate — so it must not cost a write either.
    ``shell``: the shell loop with its app ready — its API requests and its CPU (the loop's bash
    plus the ``grep``/``curl`` children it reaped).

Waiting (beside the window; ``benchmarks/waiting.py``)
    tcp and http checks at their defaults waiting for applications that are not ready yet: their
    probes and connections per second and their CPU while they wait, and how soon the condition
    turns True once the application is ready.

Per transition (after the window)
    The ``steady`` agent (``GATE_EVENTS=true``, the default) and a ``noevents`` twin
    (``GATE_EVENTS=false``) are flipped ``flips`` times by removing and re-creating the marker file;
    every request the API server logged for their Pods between one flip and the next is attributed
    to that transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from benchmarks.apps import FileApp, LogApp, ShellLoop, TcpApp, shell_loop_script
from benchmarks.cluster import GATE_KEY, Observer, create_pods, set_gate, token_dirs
from benchmarks.common import (
    JSON,
    AuditEntry,
    AuditLog,
    ProcWatcher,
    count_by,
    parse_time,
    proc_sample,
    summary,
)
from benchmarks.waiting import WaitingBench
from tests.harness.agent import AgentProcess, agent_env
from tests.harness.cluster import ControlPlane
from tests.harness.legacy_app import free_port
from tests.harness.workloads import GATE, PodRef

FLOOR_BARE = "import os; os.read(0, 1)"
FLOOR_LIBS = "import kubernetes_asyncio, aiohttp, os; os.read(0, 1)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    startups: int
    window: float
    resync: float
    flips: int
    settle: float  # after each flip was seen


def plan(smoke: bool) -> Plan:
    if smoke:
        return Plan(startups=1, window=6.0, resync=3.0, flips=4, settle=0.3)
    return Plan(startups=5, window=120.0, resync=30.0, flips=10, settle=1.0)


@dataclass(slots=True)
class Subject:
    """One Pod with its three apps (log, file, tcp) and an agent or a shell loop."""

    name: str
    pod: PodRef
    token_dir: Path
    log: LogApp
    marker: FileApp
    port: TcpApp
    agent: AgentProcess | None = None
    shell: ShellLoop | None = None
    flips: list[float] = field(default_factory=list)  # when each transition was triggered

    def check_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for check_id, app in (("LOG", self.log), ("MARK", self.marker), ("PORT", self.port)):
            for key, value in app.check_env().items():
                env[key.replace("CHECK_APP_", f"CHECK_{check_id}_")] = value
        return env

    async def ready(self) -> None:
        for app in (self.log, self.marker, self.port):
            await app.prepare()
            await app.make_ready()

    async def close(self) -> None:
        agent, self.agent = self.agent, None
        shell, self.shell = self.shell, None
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        if shell is not None:
            await asyncio.to_thread(shell.stop)
        for app in (self.log, self.marker, self.port):
            await app.close()


class IdleBench:
    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        observer: Observer,
        audit: AuditLog,
        workdir: Path,
        *,
        smoke: bool,
        out: TextIO = sys.stderr,
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.observer = observer
        self.audit = audit
        self.workdir = workdir
        self.plan = plan(smoke)
        self.out = out
        self.subjects: dict[str, Subject] = {}
        self.blips = 0
        self.waiting = WaitingBench(
            plane, namespace, observer, workdir / "waiting", smoke=smoke, out=out
        )

    def say(self, text: str) -> None:
        print(f"[idle] {text}", file=self.out, flush=True)

    async def provision(self) -> None:
        names = ["idle-steady", "idle-noevents", "idle-footprint", "idle-periodic", "idle-flaky"]
        names += ["idle-shell"]
        names += [f"idle-start-{i}" for i in range(self.plan.startups)]
        pods = await asyncio.to_thread(
            create_pods, self.plane, self.namespace, names, labels={"bench": "idle"}
        )
        dirs = await asyncio.to_thread(token_dirs, self.plane, pods, self.workdir / "tokens")
        for name, pod, token_dir in zip(names, pods, dirs, strict=True):
            base = self.workdir / "apps" / name
            self.subjects[name] = Subject(
                name=name,
                pod=pod,
                token_dir=token_dir,
                log=LogApp(base / "catalina.out"),
                marker=FileApp(base / "ready"),
                port=TcpApp(free_port()),
            )

    def _env(self, subject: Subject, **extra: str) -> dict[str, str]:
        return agent_env(
            subject.pod,
            subject.token_dir,
            {"GATE_CONDITION_TYPE": GATE, "GATE_FAILURE_THRESHOLD": "1", **subject.check_env(),
             **extra},
        )  # fmt: skip

    # --- start-up ---

    async def startups(self) -> JSON:
        runs: list[JSON] = []
        for index in range(self.plan.startups):
            subject = self.subjects[f"idle-start-{index}"]
            await subject.ready()
            env = self._env(subject)
            spawned = time.time()
            agent = await asyncio.to_thread(AgentProcess, env)
            subject.agent = agent
            deadline = time.monotonic() + 60
            while not any(e.get("status") == "True" for e in agent.events("gate_written")):
                if time.monotonic() > deadline or agent.returncode is not None:
                    raise RuntimeError(f"start-up {index}: no True written\n{agent.describe()}")
                await asyncio.sleep(0.05)

            def first(
                name: str, agent: AgentProcess = agent, spawned: float = spawned, **match: str
            ) -> float:
                for entry in agent.events(name):
                    if all(entry.get(k) == v for k, v in match.items()):
                        return parse_time(entry["timestamp"]) - spawned
                return float("nan")

            runs.append(
                {
                    "agent_started": first("agent_started"),
                    "first_check": first("check_state_changed"),
                    "first_write": first("gate_written"),
                    "first_true_write": first("gate_written", status="True"),
                }
            )
            await subject.close()
            subject.agent = None
        return {
            "runs": runs,
            **{
                key: summary([r[key] for r in runs])
                for key in ("agent_started", "first_check", "first_write", "first_true_write")
            },
        }

    # --- the idle window ---

    async def _start_subjects(self) -> None:
        resync = f"{self.plan.resync:g}"
        configs = {
            "idle-steady": {"GATE_RESYNC_SECONDS": resync},
            "idle-noevents": {"GATE_RESYNC_SECONDS": resync, "GATE_EVENTS": "false"},
            "idle-footprint": {},
            "idle-periodic": {"GATE_EVENT_DRIVEN": "false"},
            "idle-flaky": {"GATE_FAILURE_THRESHOLD": "3"},
        }
        for name, extra in configs.items():
            subject = self.subjects[name]
            await subject.ready()
            subject.agent = await asyncio.to_thread(AgentProcess, self._env(subject, **extra))
        shell = self.subjects["idle-shell"]
        await shell.log.prepare()
        await shell.log.make_ready()
        await asyncio.to_thread(set_gate, self.plane, shell.pod, "False")
        shell.shell = ShellLoop(shell_loop_script(shell.log, shell.pod, shell.token_dir))
        deadline = asyncio.get_running_loop().time() + 120
        for name in (*configs, "idle-shell"):
            ok = await self.observer.wait_state(name, {GATE_KEY: ("True",)}, deadline=deadline)
            if not ok:
                agent = self.subjects[name].agent
                raise RuntimeError(
                    f"{name} never became True" + (agent.describe() if agent else "")
                )

    async def window(self) -> JSON:
        floors = {
            "bare": await asyncio.to_thread(_python, FLOOR_BARE),
            "libs": await asyncio.to_thread(_python, FLOOR_LIBS),
        }
        try:
            await self._start_subjects()
            await asyncio.sleep(3)  # the last start-up writes (and Events) land, the floors import
            footprint = self.subjects["idle-footprint"].agent
            periodic = self.subjects["idle-periodic"].agent
            shell = self.subjects["idle-shell"].shell
            assert footprint is not None
            assert periodic is not None
            assert shell is not None
            watchers = {
                "agent": ProcWatcher(footprint.pid),
                "agent_periodic": ProcWatcher(periodic.pid),
                "floor_bare": ProcWatcher(floors["bare"].pid),
                "floor_libs": ProcWatcher(floors["libs"].pid),
                "shell_loop": ProcWatcher(shell.pid),
            }
            self.say(f"idle window {self.plan.window:g} s")
            start = time.time()
            tasks = [asyncio.create_task(w.run(2.0)) for w in watchers.values()]
            tasks.append(asyncio.create_task(self._blips(self.subjects["idle-flaky"].port)))
            await asyncio.sleep(self.plan.window)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for watcher in watchers.values():  # one last sample exactly at the end
                if (sample := await asyncio.to_thread(proc_sample, watcher.pid)) is not None:
                    watcher.samples.append(sample)
            end = time.time()
        finally:
            for process in floors.values():
                with contextlib.suppress(OSError):
                    if process.stdin is not None:
                        process.stdin.close()
                process.kill()
                process.wait(5)
        await self.subjects["idle-shell"].close()
        usage = {
            name: w.figures(include_children=name == "shell_loop") for name, w in watchers.items()
        }
        await self.audit.settled()
        hour = 3600.0 / (end - start)
        steady: dict[str, Any] = {}
        for name in ("idle-steady", "idle-noevents", "idle-footprint", "idle-flaky", "idle-shell"):
            entries = self.audit.select(start=start, end=end, pods=[name])
            writes = sum(1 for e in entries if e.is_write)
            reads = len(entries) - writes
            steady[name] = {
                "requests": count_by(entries),
                "writes": writes,
                "reads": reads,
                "writes_per_hour": writes * hour,
                "reads_per_hour": reads * hour,
            }
        return {
            "window_seconds": end - start,
            "resync_seconds": self.plan.resync,
            "expected_resync_reads": (end - start) / self.plan.resync,
            "steady": steady,
            "footprint_seconds": usage["agent"]["seconds"],
            "flaky_blips": self.blips,
            "usage": usage,
        }

    async def _blips(self, port: TcpApp) -> None:
        """Close the port for 1.5 s every 10 s (the first time 2 s into the window)."""
        await asyncio.sleep(2.0)
        while True:
            await port.make_unready(restart=False)
            self.blips += 1
            await asyncio.sleep(1.5)
            await port.make_ready()
            await asyncio.sleep(8.5)

    # --- per transition ---

    async def _flip(self, subject: Subject) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.plan.flips):
            wanted = "False" if index % 2 == 0 else "True"
            subject.flips.append(time.time())
            if wanted == "False":
                await subject.marker.make_unready(restart=False)
            else:
                await subject.marker.make_ready()
            at = await self.observer.wait_change(
                subject.name, GATE_KEY, wanted, after=subject.flips[-1], deadline=loop.time() + 30
            )
            if at is None:
                raise RuntimeError(f"{subject.name}: the gate did not become {wanted}")
            await asyncio.sleep(self.plan.settle)

    async def transitions(self) -> JSON:
        subjects = [self.subjects["idle-steady"], self.subjects["idle-noevents"]]
        async with asyncio.TaskGroup() as group:
            for subject in subjects:
                group.create_task(self._flip(subject))
        end = time.time() + 0.5
        await self.audit.settled()
        out: dict[str, Any] = {}
        for subject in subjects:
            bounds = [*subject.flips, end]
            per: list[list[AuditEntry]] = [
                self.audit.select(start=bounds[i], end=bounds[i + 1], pods=[subject.name])
                for i in range(len(subject.flips))
            ]
            status_writes = [
                sum(1 for e in es if e.verb == "patch" and e.resource == "pods/status")
                for es in per
            ]
            event_writes = [sum(1 for e in es if e.resource == "events") for es in per]
            writes = [sum(1 for e in es if e.is_write) for es in per]
            reads = [sum(1 for e in es if not e.is_write) for es in per]
            out[subject.name] = {
                "transitions": len(per),
                "status_writes": status_writes,
                "event_writes": event_writes,
                "writes": writes,
                "reads": reads,
                "requests": count_by(e for es in per for e in es),
                "status_writes_per_transition": sum(status_writes) / len(per),
                "writes_per_transition": sum(writes) / len(per),
                "event_writes_per_transition": sum(event_writes) / len(per),
                "reads_per_transition": sum(reads) / len(per),
                "exactly_one_status_write_each": all(n == 1 for n in status_writes),
                "exactly_one_write_each": all(n == 1 for n in writes),
            }
        for name in ("idle-footprint", "idle-periodic", "idle-flaky"):
            await self.subjects[name].close()
        for subject in subjects:
            await subject.close()
        return out

    async def run(self) -> JSON:
        await self.provision()
        self.say(f"start-up: {self.plan.startups} fresh agents, one after the other")
        startup = await self.startups()
        async with asyncio.TaskGroup() as group:  # the waiting agents beside the idle window
            window_task = group.create_task(self.window())
            waiting_task = group.create_task(self.waiting.run())
        window, waiting = window_task.result(), waiting_task.result()
        self.say(f"per transition: {self.plan.flips} flips each of two agents")
        transitions = await self.transitions()
        return {
            "startup": startup,
            "idle": window,
            "transitions": transitions,
            "waiting": waiting,
        }

    async def close(self) -> None:
        for subject in self.subjects.values():
            await subject.close()


def _python(code: str) -> subprocess.Popen[bytes]:
    """An idle ``python -c code`` (it blocks reading stdin until the pipe closes)."""
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
