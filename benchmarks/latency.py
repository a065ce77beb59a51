"""1. Reaction latency: from the app becoming ready to (a) the gate condition True, (b) the
kubelet's ``Ready`` True, (c) the EndpointSlice endpoint ready — each seen by a streaming watch.

Configurations, all measured in the same run, each with its own Pods:

``agent``
    The agent as shipped: event-driven log and file checks; tcp and http checks probe on their
    fast period (0.1 s, 0.15 s) while not ready, and on ``GATE_PERIOD_SECONDS`` (default 2) once
    ready.
``periodic-1s``, ``periodic-10s``
    The agent with ``GATE_EVENT_DRIVEN=false``, ``GATE_FAST_PERIOD_SECONDS=0`` at
    ``GATE_PERIOD_SECONDS=1`` and ``=10``: what a kubelet-style periodic probe gives.
``shell-loop``
    The classic readiness-gate shell loop (``grep -q ... && curl -X PATCH ...; sleep 1``).

Every agent runs with ``GATE_FAILURE_THRESHOLD=1`` so that resetting a lane between trials is
quick; it does not touch the rising edge that is measured (success threshold 1, the default).

A *lane* is one Pod (with its own Service, so its endpoint has its own EndpointSlice), one agent
process with that Pod's bound token, and one fake application. A trial: wait a random delay of up
to one period (so triggers are uniformly spread over the probe phase, not aligned with the last
probe; for the event-driven log and file checks, which do not wait for a probe, over 1 s), make
the app ready, wait for the three observations, make the app not ready again and wait until all
three are back to not ready (a lane's last trial leaves its app ready: the lane stops next).

Keeping agents idle-equivalent: lanes run in parallel to save time, but

* the event-driven phase (``agent`` log and file) and the fast phase (``agent`` tcp and http) are
  **exclusive**: one trial at a time across the phase's lanes, from the trigger until gate, Ready
  and endpoint are back to not ready, so the agent under test, the API server and the kubelet have
  nothing else to do;
* the periodic phases space every trigger and every reset at least :data:`PERIODIC_GAP` apart across
  all lanes; their latency is dominated by the probe phase anyway;
* the shell loops (which fork ``grep`` and ``curl`` every second) run in a phase of their own;
* each phase starts only its own agents (every other lane of the suite is stopped), and the
  average CPU of its agent processes over the phase is reported
  (``phases.<phase>.agent_millicores_per_process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from benchmarks.apps import KINDS, App, FileApp, HttpApp, LogApp, ShellLoop, TcpApp
from benchmarks.apps import shell_loop_script as make_script
from benchmarks.cluster import (
    ENDPOINT_KEY,
    GATE_KEY,
    NOT_READY,
    READY_KEY,
    Observer,
    create_pods,
    describe_pods,
    set_gate,
    token_dirs,
)
from benchmarks.common import JSON, ProcWatcher, parse_time, summary
from tests.harness.agent import AgentProcess, agent_env
from tests.harness.cluster import ControlPlane
from tests.harness.legacy_app import free_port
from tests.harness.workloads import GATE, PodRef

#: What a trigger of the agent's checks is spread over: the event-driven ones do not wait for a
#: probe, and the fast ones (tcp, http) probe many times a second until they succeed.
EVENT_SPREAD = 1.0
PERIODIC_GAP = 0.1
EXCLUSIVE_GAP = 0.05
SHELL_SETTLE = 1.6  # after the app stops: let an iteration that already passed its test finish


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    name: str
    description: str
    env: dict[str, str]
    period: float  # what a trigger's random delay spans; also the tcp target's "one period"
    shell: bool = False
    timeout: float = 20.0  # per observation


BASE_ENV = {"GATE_CONDITION_TYPE": GATE, "GATE_FAILURE_THRESHOLD": "1", "GATE_LOG_LEVEL": "info"}

CONFIGS = (
    Config(name="agent", description="the agent as shipped (event-driven, fast while not ready, "
                                      "period 2 s)",
           env={}, period=2.0),
    Config(name="periodic-1s", description="GATE_EVENT_DRIVEN=false, GATE_FAST_PERIOD_SECONDS=0, "
                                           "GATE_PERIOD_SECONDS=1",
           env={"GATE_EVENT_DRIVEN": "false", "GATE_FAST_PERIOD_SECONDS": "0",
                "GATE_PERIOD_SECONDS": "1", "GATE_TIMEOUT_SECONDS": "0.5"},
           period=1.0),
    Config(name="periodic-10s", description="GATE_EVENT_DRIVEN=false, GATE_FAST_PERIOD_SECONDS=0, "
                                            "GATE_PERIOD_SECONDS=10",
           env={"GATE_EVENT_DRIVEN": "false", "GATE_FAST_PERIOD_SECONDS": "0",
                "GATE_PERIOD_SECONDS": "10"},
           period=10.0, timeout=40.0),
    Config(name="shell-loop", description="while true; do <test> && curl -X PATCH ...; sleep 1",
           env={}, period=1.0, shell=True),
)  # fmt: skip
CONFIG_NAMES = tuple(c.name for c in CONFIGS)
#: The agent's kinds whose rising edge comes from fast probes (the fast phase).
FAST_KINDS = ("tcp", "http")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    trials: int  # per (configuration, kind)
    lanes: dict[tuple[str, str], int]  # (configuration, kind) -> parallel lanes
    jitter: float  # the random delay before a trigger spans this many periods


def plan(smoke: bool) -> Plan:
    lanes: dict[tuple[str, str], int] = {}
    for config in CONFIG_NAMES:
        for kind in KINDS:
            if smoke:
                lanes[config, kind] = 2 if config == "periodic-10s" else 1
            elif config == "periodic-10s":
                lanes[config, kind] = 12
            elif config == "agent":
                lanes[config, kind] = 1  # exclusive phases: more lanes would only wait their turn
            else:
                lanes[config, kind] = 3
    return Plan(trials=2 if smoke else 50, lanes=lanes, jitter=0.1 if smoke else 1.0)


@dataclass(slots=True)
class Trial:
    started: float  # epoch seconds: just before the app's decisive system call
    gate: float | None = None  # seconds after ``started``
    ready: float | None = None
    endpoint: float | None = None
    detected: float | None = None  # the agent's check_state_changed(ready) log entry
    written: float | None = None  # the agent's gate_written(True) log entry (PATCH answered)


@dataclass(slots=True)
class Lane:
    config: Config
    kind: str
    pod: PodRef
    app: App
    token_dir: Path
    agent: AgentProcess | None = None
    shell: ShellLoop | None = None
    watcher: ProcWatcher | None = None
    trials: list[Trial] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        if self.agent is not None:
            return self.agent.pid
        return self.shell.pid if self.shell is not None else None


class Pacer:
    """Spaces actions across lanes; with ``exclusive`` the whole body runs alone."""

    def __init__(self, gap: float) -> None:
        self._gap = gap
        self._lock = asyncio.Lock()
        self._last = -math.inf

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            wait = self._last + self._gap - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last = asyncio.get_running_loop().time()


class LatencyBench:
    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        observer: Observer,
        workdir: Path,
        *,
        smoke: bool,
        out: TextIO = sys.stderr,
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.observer = observer
        self.workdir = workdir
        self.plan = plan(smoke)
        self.out = out
        self.rng = random.Random(20241126)  # trigger jitter, not cryptography
        self.lanes: list[Lane] = []
        self.phases: dict[str, JSON] = {}

    def say(self, text: str) -> None:
        print(f"[latency] {text}", file=self.out, flush=True)

    # --- set-up ---

    async def provision(self) -> None:
        specs: list[tuple[Config, str, str]] = []
        for config in CONFIGS:
            for kind in KINDS:
                for index in range(self.plan.lanes[config.name, kind]):
                    specs.append((config, kind, f"lat-{config.name}-{kind}-{index}"))
        names = [name for _, _, name in specs]
        started = time.monotonic()
        pods = await asyncio.to_thread(
            create_pods, self.plane, self.namespace, names, labels={"bench": "latency"},
            services=True,
        )  # fmt: skip
        dirs = await asyncio.to_thread(token_dirs, self.plane, pods, self.workdir / "tokens")
        for (config, kind, name), pod, token_dir in zip(specs, pods, dirs, strict=True):
            app: App
            if kind == "log":
                app = LogApp(self.workdir / "apps" / name / "catalina.out")
            elif kind == "file":
                app = FileApp(self.workdir / "apps" / name / "ready")
            elif kind == "http":
                app = HttpApp(free_port())
            else:
                app = TcpApp(free_port())
            await app.prepare()
            self.lanes.append(Lane(config=config, kind=kind, pod=pod, app=app, token_dir=token_dir))
        self.say(f"{len(pods)} Pods with Services running in {time.monotonic() - started:.1f} s")

    async def start(self, lanes: Sequence[Lane]) -> None:
        """Start the agents (or shell loops) of ``lanes``; wait until every lane is not ready."""
        for lane in lanes:
            if lane.config.shell:
                await asyncio.to_thread(set_gate, self.plane, lane.pod, "False")
                script = make_script(lane.app, lane.pod, lane.token_dir)
                lane.shell = ShellLoop(script)
            else:
                env = agent_env(
                    lane.pod,
                    lane.token_dir,
                    {**BASE_ENV, **lane.config.env, **lane.app.check_env()},
                )
                lane.agent = await asyncio.to_thread(AgentProcess, env)
        deadline = asyncio.get_running_loop().time() + 180
        for lane in lanes:
            if not await self.observer.wait_state(lane.pod.name, NOT_READY, deadline=deadline):
                raise RuntimeError(
                    f"lane {lane.pod.name} not in its not-ready state: "
                    f"{describe_pods(self.observer, [lane.pod.name])}"
                    + (f"\n{lane.agent.describe()}" if lane.agent else "")
                )

    async def stop(self, lanes: Sequence[Lane]) -> None:
        async def one(lane: Lane) -> None:
            if lane.agent is not None:
                await asyncio.to_thread(lane.agent.stop)
            if lane.shell is not None:
                await asyncio.to_thread(lane.shell.stop)
            await lane.app.close()

        await asyncio.gather(*(one(lane) for lane in lanes))

    # --- trials ---

    async def _rise(self, lane: Lane, trial: Trial) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lane.config.timeout
        pod, t0 = lane.pod.name, trial.started
        for key, value in ((GATE_KEY, "True"), (READY_KEY, "True"), (ENDPOINT_KEY, "True")):
            at = await self.observer.wait_change(pod, key, value, after=t0, deadline=deadline)
            if at is None:
                lane.failures.append(f"trial at {t0:.3f}: no {key} True within the timeout")
                return
            setattr(trial, key, at - t0)

    async def _fall(self, lane: Lane) -> bool:
        if lane.config.shell:
            await asyncio.sleep(SHELL_SETTLE)
            await asyncio.to_thread(set_gate, self.plane, lane.pod, "False")
        deadline = asyncio.get_running_loop().time() + lane.config.timeout
        ok = await self.observer.wait_state(lane.pod.name, NOT_READY, deadline=deadline)
        if not ok:
            lane.failures.append(
                f"not reset within the timeout: {describe_pods(self.observer, [lane.pod.name])}"
            )
        return ok

    async def _trial(self, lane: Lane, pacer: Pacer, *, exclusive: bool, last: bool) -> None:
        """One trial; the lane's ``last`` one leaves the app ready (the lane stops next)."""
        await asyncio.sleep(self.rng.uniform(0, self._phase_span(lane) * self.plan.jitter))
        if not all(self.observer.value(lane.pod.name, k) in v for k, v in NOT_READY.items()):
            await self._fall(lane)
        async with pacer.slot():
            trial = Trial(started=await lane.app.make_ready())
            if exclusive:
                await self._rise(lane, trial)
                if not last:
                    await lane.app.make_unready(restart=lane.config.shell)
                    await self._fall(lane)
        if not exclusive:
            await self._rise(lane, trial)
            if not last:
                async with pacer.slot():
                    await lane.app.make_unready(restart=lane.config.shell)
                await self._fall(lane)
        self._agent_times(lane, trial)
        lane.trials.append(trial)

    @staticmethod
    def _phase_span(lane: Lane) -> float:
        """What a trigger is spread over: the probe period, or for the agent's checks (which
        inotify wakes at once, or which probe fast while not ready) :data:`EVENT_SPREAD`."""
        if lane.config.name == "agent":
            return min(lane.config.period, EVENT_SPREAD)
        return lane.config.period

    def _agent_times(self, lane: Lane, trial: Trial) -> None:
        """Where the time went inside the agent, from its own log (ISO timestamps)."""
        if lane.agent is None:
            return
        t0 = trial.started - 0.001
        for entry in lane.agent.events("check_state_changed"):
            at = parse_time(entry["timestamp"])
            if at >= t0 and entry.get("state") == "ready":
                trial.detected = at - trial.started
                break
        for entry in lane.agent.events("gate_written"):
            at = parse_time(entry["timestamp"])
            if at >= t0 and entry.get("status") == "True":
                trial.written = at - trial.started
                break

    async def _run_lanes(self, lanes: Sequence[Lane], pacer: Pacer, *, exclusive: bool) -> None:
        async def lane_loop(lane: Lane, count: int) -> None:
            for index in range(count):
                await self._trial(lane, pacer, exclusive=exclusive, last=index == count - 1)

        async with asyncio.TaskGroup() as group:
            for (config, kind), members in _groups(lanes).items():
                share = _split(self.plan.trials, len(members))
                for lane, count in zip(members, share, strict=True):
                    group.create_task(lane_loop(lane, count), name=f"{config}-{kind}")

    async def phase(self, name: str, lanes: Sequence[Lane], *, exclusive: bool) -> None:
        if not lanes:
            return
        began = time.monotonic()
        self.say(f"phase {name}: starting {len(lanes)} lanes")
        await self.start(lanes)
        watchers = [ProcWatcher(lane.pid) for lane in lanes if lane.pid is not None]
        sampling = [asyncio.create_task(w.run(2.0)) for w in watchers]
        try:
            self.say(f"phase {name}: running {self.plan.trials} trials per configuration and kind")
            pacer = Pacer(EXCLUSIVE_GAP if exclusive else PERIODIC_GAP)
            await self._run_lanes(lanes, pacer, exclusive=exclusive)
        finally:
            for task in sampling:
                task.cancel()
            await asyncio.gather(*sampling, return_exceptions=True)
            await self.stop(lanes)
        background = [w.figures(include_children=True)["cpu_millicores"] for w in watchers]
        self.phases[name] = {
            "lanes": len(lanes),
            "exclusive": exclusive,
            "seconds": time.monotonic() - began,
            "processes": len(watchers),
            "agent_millicores_per_process": sum(background) / max(len(background), 1),
        }
        self.say(f"phase {name}: done in {time.monotonic() - began:.0f} s")

    async def run(self) -> JSON:
        await self.provision()
        agent = [lane for lane in self.lanes if lane.config.name == "agent"]
        event_driven = [lane for lane in agent if lane.kind not in FAST_KINDS]
        fast = [lane for lane in agent if lane.kind in FAST_KINDS]
        periodic = [lane for lane in self.lanes if not lane.config.shell and lane not in agent]
        shell = [lane for lane in self.lanes if lane.config.shell]
        await self.phase("event-driven", event_driven, exclusive=True)
        await self.phase("fast", fast, exclusive=True)
        await self.phase("periodic", periodic, exclusive=False)
        await self.phase("shell-loop", shell, exclusive=False)
        return self.results()

    # --- results ---

    def results(self) -> JSON:
        out: dict[str, Any] = {"trials_per_row": self.plan.trials, "phases": self.phases,
                               "rows": {}}  # fmt: skip
        for (config, kind), members in _groups(self.lanes).items():
            trials = [t for lane in members for t in lane.trials]
            failures = [f for lane in members for f in lane.failures]

            def stats(key: str, trials: list[Trial] = trials) -> JSON:
                return summary([v for t in trials if (v := getattr(t, key)) is not None])

            out["rows"][f"{kind}.{config}"] = {
                "config": config,
                "kind": kind,
                "lanes": len(members),
                "trials": len(trials),
                "failures": len(failures),
                "failure_examples": failures[:3],
                "condition_true": stats("gate"),
                "kubelet_ready": stats("ready"),
                "endpoint_ready": stats("endpoint"),
                "agent_detected": stats("detected"),
                "agent_written": stats("written"),
                # how long the kubelet took to follow the condition with Ready (the same for
                # every configuration: the kubelet, not the agent)
                "kubelet_after_condition": summary(
                    [t.ready - t.gate for t in trials if t.ready is not None and t.gate is not None]
                ),
                # every trial: seconds to condition True, Ready True, endpoint ready
                "samples": [[_round(t.gate), _round(t.ready), _round(t.endpoint)] for t in trials],
            }
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _groups(lanes: Sequence[Lane]) -> dict[tuple[str, str], list[Lane]]:
    groups: dict[tuple[str, str], list[Lane]] = {}
    for lane in lanes:
        groups.setdefault((lane.config.name, lane.kind), []).append(lane)
    return groups


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
