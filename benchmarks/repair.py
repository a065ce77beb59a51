"""6. Repair: another writer turns the gate False behind the agent's back: how soon is it True?

One Pod (hollow node) whose agent (a real process, shipped defaults, one file check on a marker
that exists) keeps its gate True. A trial: the administrator PATCHes the gate False (reason
``SomebodyElse``, as a stray controller or a script would); the streaming :class:`Observer` sees
the foreign False and then the agent's True; the latency is between those two receive times. The
agent learns of the foreign write from its watch of its own Pod, not from its resync (300 s).

Same-run baseline: the classic shell loop (test, then ``curl -X PATCH`` True every second), which
repairs by rewriting the condition every second whether or not anything changed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import TextIO

from benchmarks.apps import FileApp, ShellLoop, shell_loop_script
from benchmarks.cluster import GATE_KEY, Observer, create_pods, set_gate, token_dirs
from benchmarks.common import JSON, summary
from tests.harness.agent import AgentProcess, agent_env
from tests.harness.cluster import ControlPlane
from tests.harness.workloads import GATE, PodRef

TIMEOUT = 10.0


class RepairBench:
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
        self.workdir = workdir / "repair"
        self.trials = 3 if smoke else 50
        self.baseline_trials = 2 if smoke else 20
        self.out = out
        self.rng = random.Random(11)

    def say(self, text: str) -> None:
        print(f"[repair] {text}", file=self.out, flush=True)

    async def run(self) -> JSON:
        pods = await asyncio.to_thread(
            create_pods, self.plane, self.namespace, ["repair-agent", "repair-shell"],
            labels={"bench": "repair"},
        )  # fmt: skip
        tokens = await asyncio.to_thread(token_dirs, self.plane, pods, self.workdir / "tokens")
        agent_app = FileApp(self.workdir / "agent" / "ready")
        shell_app = FileApp(self.workdir / "shell" / "ready")
        for app in (agent_app, shell_app):
            await app.prepare()
            await app.make_ready()
        env = agent_env(pods[0], tokens[0], {"GATE_CONDITION_TYPE": GATE, **agent_app.check_env()})
        agent = await asyncio.to_thread(AgentProcess, env)
        try:
            agent_result = await self._trials(pods[0], self.trials)
            status = await asyncio.to_thread(agent.status)
        finally:
            await asyncio.to_thread(agent.stop)
        shell = ShellLoop(shell_loop_script(shell_app, pods[1], tokens[1]))
        try:
            shell_result = await self._trials(pods[1], self.baseline_trials)
        finally:
            await asyncio.to_thread(shell.stop)
        self.say(
            f"agent repairs p50 {_ms(agent_result['latency']['p50'])}, shell loop p50 "
            f"{_ms(shell_result['latency']['p50'])}"
        )
        return {
            "agent": {**agent_result, "reads": status["api"]["reads"],
                      "watches": status["api"]["watches"],
                      "repairs": status["gates"][GATE]["repairs"]},
            "shell_loop": shell_result,
        }  # fmt: skip

    async def _trials(self, pod: PodRef, count: int) -> JSON:
        loop = asyncio.get_running_loop()
        await self.observer.wait_change(
            pod.name, GATE_KEY, "True", after=0.0, deadline=loop.time() + 60
        )
        latencies: list[float] = []
        failures = 0
        for _ in range(count):
            await asyncio.sleep(self.rng.uniform(0.2, 1.2))
            flipped = time.time()
            await asyncio.to_thread(set_gate, self.plane, pod, "False", "SomebodyElse")
            deadline = loop.time() + TIMEOUT
            seen_false = await self.observer.wait_change(
                pod.name, GATE_KEY, "False", after=flipped, deadline=deadline
            )
            back = await self.observer.wait_change(
                pod.name, GATE_KEY, "True", after=seen_false or flipped, deadline=deadline
            )
            if seen_false is None or back is None:
                failures += 1
                continue
            latencies.append(back - seen_false)
        return {"trials": count, "failures": failures, "latency": summary(latencies)}


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"
