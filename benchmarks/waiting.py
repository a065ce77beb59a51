"""Part of 2./3. (the ``idle`` section): what a tcp or http check costs while it waits for its app.

A tcp or http check that is not ready probes on its fast period (0.1 s, 0.15 s by default) until it
finds a success. Each scenario is one agent with one check at its defaults, on its own Pod, waiting
``wait`` seconds (60 in the full run) for an application that is not ready yet, which then
becomes ready:

``tcp-closed``
    a banner server (``^220 ``) whose port is closed; after the wait it starts listening.
``tcp-closed-nofast``
    the same with ``GATE_FAST_PERIOD_SECONDS=0``: the baseline, probing on the 2 s period only.
``tcp-loading``
    a fake Redis (``PING`` / ``^\\+PONG``) that listens from the start but answers ``-LOADING``
    and keeps the connection open, as Redis does while it loads its data set; after the wait it
    answers ``+PONG``.
``http-closed``, ``http-closed-nofast``
    an HTTP server whose port is closed, then answering 200; and the baseline without fast probes.
``http-503``
    an HTTP server answering 503 from the start, then 200.

Measured over the wait: the agent's CPU (utime+stime, and the scheduler's count), its probes per
second (its own ``readiness_gate_check_results_total``: one connection per tcp or http probe, the
http check opens a new connection for every request), and for the servers that listen, the
connections they accepted per second. Then: from the app becoming ready (just before ``listen``,
or the switch to ``+PONG`` / 200) to the gate condition True on the watch.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmarks.apps import HttpApp, TcpApp
from benchmarks.cluster import GATE_KEY, Observer, create_pods, token_dirs
from benchmarks.common import JSON, ProcWatcher, proc_sample
from tests.harness.agent import AgentProcess, agent_env
from tests.harness.cluster import ControlPlane
from tests.harness.legacy_app import FakeRedis, free_port
from tests.harness.workloads import GATE, PodRef

NOFAST = {"GATE_FAST_PERIOD_SECONDS": "0"}
REDIS = {"CHECK_APP_SEND": r"PING\r\n", "CHECK_APP_EXPECT": r"^\+PONG"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    kind: str  # tcp | http
    app: str  # closed (opens after the wait) | loading (FakeRedis) | 503 (then 200)
    env: dict[str, str] = field(default_factory=dict)


SCENARIOS = (
    Scenario(name="tcp-closed", kind="tcp", app="closed"),
    Scenario(name="tcp-closed-nofast", kind="tcp", app="closed", env=NOFAST),
    Scenario(name="tcp-loading", kind="tcp", app="loading", env=REDIS),
    Scenario(name="http-closed", kind="http", app="closed"),
    Scenario(name="http-closed-nofast", kind="http", app="closed", env=NOFAST),
    Scenario(name="http-503", kind="http", app="503"),
)


def plan_wait(smoke: bool) -> float:
    return 4.0 if smoke else 60.0


@dataclass(slots=True)
class Waiter:
    scenario: Scenario
    pod: PodRef
    token_dir: Path
    port: int
    server: TcpApp | None = None  # TcpApp or HttpApp
    redis: FakeRedis | None = None
    agent: AgentProcess | None = None

    def check_env(self) -> dict[str, str]:
        app = HttpApp(self.port) if self.scenario.kind == "http" else TcpApp(self.port)
        return {**app.check_env(), **self.scenario.env}

    def connections(self) -> int | None:
        """Connections the app accepted so far (None while nothing listens)."""
        if self.redis is not None:
            return self.redis.connections
        return self.server.connections if self.server is not None else None

    async def start_app(self) -> None:
        """The not-ready application: nothing listening, a loading Redis, or a 503."""
        if self.scenario.app == "loading":
            self.redis = await asyncio.to_thread(FakeRedis, self.port)
        elif self.scenario.app == "503":
            self.server = HttpApp(self.port, status=503)
            await self.server.make_ready()

    async def make_ready(self) -> float:
        """The application becomes ready; the wall-clock time of the decisive moment."""
        if self.redis is not None:
            at = time.time()
            self.redis.loading = False
            return at
        if isinstance(self.server, HttpApp):
            at = time.time()
            self.server.status = 200
            return at
        self.server = HttpApp(self.port) if self.scenario.kind == "http" else TcpApp(self.port)
        return await self.server.make_ready()

    async def close(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        if self.server is not None:
            await self.server.close()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
            self.redis = None


async def probes_so_far(agent: AgentProcess) -> float:
    """The agent's readiness_gate_check_results_total, summed over results."""
    code, body = await asyncio.to_thread(agent.get, "/metrics")
    if code != 200:
        raise RuntimeError(f"GET /metrics answered {code}")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("readiness_gate_check_results_total{")
    )


class WaitingBench:
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
        self.wait = plan_wait(smoke)
        self.out = out
        self.waiters: list[Waiter] = []

    def say(self, text: str) -> None:
        print(f"[idle/waiting] {text}", file=self.out, flush=True)

    async def provision(self) -> None:
        names = [f"wait-{s.name}" for s in SCENARIOS]
        pods = await asyncio.to_thread(
            create_pods, self.plane, self.namespace, names, labels={"bench": "waiting"}
        )
        dirs = await asyncio.to_thread(token_dirs, self.plane, pods, self.workdir / "tokens")
        for scenario, pod, token_dir in zip(SCENARIOS, pods, dirs, strict=True):
            self.waiters.append(
                Waiter(scenario=scenario, pod=pod, token_dir=token_dir, port=free_port())
            )

    async def _start(self) -> None:
        for waiter in self.waiters:
            await waiter.start_app()
            env = agent_env(
                waiter.pod, waiter.token_dir, {"GATE_CONDITION_TYPE": GATE, **waiter.check_env()}
            )
            waiter.agent = await asyncio.to_thread(AgentProcess, env)
        deadline = asyncio.get_running_loop().time() + 120
        for waiter in self.waiters:
            name = waiter.pod.name
            if not await self.observer.wait_state(name, {GATE_KEY: ("False",)}, deadline=deadline):
                assert waiter.agent is not None
                raise RuntimeError(f"{name}: no gate condition False\n{waiter.agent.describe()}")

    async def run(self) -> JSON:
        await self.provision()
        try:
            await self._start()
            return await self._measure()
        finally:
            await asyncio.gather(*(waiter.close() for waiter in self.waiters))

    async def _measure(self) -> JSON:
        agents = [w.agent for w in self.waiters if w.agent is not None]
        watchers = [ProcWatcher(agent.pid) for agent in agents]
        for watcher in watchers:
            if (sample := await asyncio.to_thread(proc_sample, watcher.pid)) is not None:
                watcher.samples.append(sample)
        probes = [await probes_so_far(agent) for agent in agents]
        accepted = [w.connections() for w in self.waiters]
        start = time.monotonic()
        self.say(f"{len(agents)} agents waiting {self.wait:g} s for their apps")
        await asyncio.sleep(self.wait)
        for watcher in watchers:
            if (sample := await asyncio.to_thread(proc_sample, watcher.pid)) is not None:
                watcher.samples.append(sample)
        probes = [await probes_so_far(a) - before for a, before in zip(agents, probes, strict=True)]
        seconds = time.monotonic() - start
        accepted = [
            None if before is None or (now := w.connections()) is None else now - before
            for w, before in zip(self.waiters, accepted, strict=True)
        ]
        out: dict[str, JSON] = {}
        loop = asyncio.get_running_loop()
        for waiter, watcher, count, connections in zip(
            self.waiters, watchers, probes, accepted, strict=True
        ):
            ready_at = await waiter.make_ready()
            seen = await self.observer.wait_change(
                waiter.pod.name, GATE_KEY, "True", after=ready_at, deadline=loop.time() + 30
            )
            usage = watcher.figures()
            out[waiter.scenario.name] = {
                "kind": waiter.scenario.kind,
                "app": waiter.scenario.app,
                "env": waiter.scenario.env,
                "seconds": seconds,
                "probes": count,
                "probes_per_second": count / seconds,
                "connections_accepted": connections,
                "connections_accepted_per_second": None
                if connections is None
                else connections / seconds,
                "cpu_millicores": usage["cpu_millicores"],
                "sched_millicores": usage["sched_millicores"],
                "condition_true_after_ready": None if seen is None else seen - ready_at,
            }
        return {"wait_seconds": self.wait, "scenarios": out}
