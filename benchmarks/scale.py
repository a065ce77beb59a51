"""5. Scale: N agents against one API server, each flipping its gate.

The agents are ``sidecar.runtime.Agent`` objects, as tasks in this process: each with its own Pod
(on the hollow node), its own Pod-bound token and settings, its own API client and its own HTTP
endpoints on 127.0.0.1:0. Each has one file check (its marker file) with the default timing
(period 2 s, timeout 1 s) and ``GATE_EVENT_DRIVEN=false``: inotify instances are limited per
*user* (``fs.inotify.max_user_instances``, 128 by default), which one process holding hundreds of
agents would exhaust (an agent then falls back to a 1 s stat poll, which works, but the periodic
probe is deterministic). All agents share this process's event loop, unlike real sidecars, so its
lag is reported: when the machine is saturated, late probes time out, and a timed-out probe
changes the condition's message (an extra write without a transition) or, with the failure
threshold of 1 used here, flips the gate.

For each N: start N agents, wait until every one has synchronised and written its condition, then
over a window of ``window`` seconds flip each agent's marker ``flips`` times (one flip per equal
slot of the window, at a random moment in the slot's first part, so flips of one agent are at least
3.5 s apart and the fleet's flips are spread uniformly), wait until every agent has written its
final state, and read the API server's audit log: every request by these agents' tokens in the
window (rate, and cost per agent and per transition), and each status PATCH's server-side latency
(``requestReceivedTimestamp`` → ``stageTimestamp``). ``apiserver_request_total`` (every client:
the kubelet and the controllers react to each flip too) and the API server's CPU over the same
window are reported alongside.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from benchmarks.cluster import apiserver_requests_total, create_pods, token_dirs
from benchmarks.common import JSON, AuditLog, LoadSampler, count_by, proc_sample, summary
from sidecar import logs
from sidecar.config import load_settings
from sidecar.runtime import Agent
from tests.harness.agent import agent_env
from tests.harness.cluster import ControlPlane
from tests.harness.workloads import GATE, PodRef

MIN_FLIP_SPACING = 3.5


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    sizes: tuple[int, ...]
    flips: int  # per agent, even: every agent ends where it started (not ready)
    window: float
    rest: float  # at rest, with the agents (and their watches) and then without them
    long_rest: float  # the largest N at rest: long enough for every watch to be reopened once


def plan(smoke: bool) -> Plan:
    if smoke:
        return Plan(sizes=(4, 8), flips=2, window=5.0, rest=3.0, long_rest=3.0)
    return Plan(sizes=(50, 200, 500), flips=4, window=30.0, rest=60.0, long_rest=420.0)


class ScaleBench:
    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        audit: AuditLog,
        workdir: Path,
        *,
        smoke: bool,
        out: TextIO = sys.stderr,
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.audit = audit
        self.workdir = workdir / "scale"
        self.plan = plan(smoke)
        self.out = out
        self.rng = random.Random(7)
        self.pods: list[PodRef] = []
        self.tokens: list[Path] = []

    def say(self, text: str) -> None:
        print(f"[scale] {text}", file=self.out, flush=True)

    async def provision(self) -> JSON:
        count = max(self.plan.sizes)
        names = [f"scale-{i}" for i in range(count)]
        started = time.monotonic()
        self.pods = await asyncio.to_thread(
            create_pods, self.plane, self.namespace, names, labels={"bench": "scale"}, threads=16
        )
        created = time.monotonic() - started
        self.tokens = await asyncio.to_thread(
            token_dirs, self.plane, self.pods, self.workdir / "tokens", threads=16
        )
        self.say(f"{count} Pods running in {created:.0f} s")
        return {"pods": count, "create_seconds": created}

    def _marker(self, index: int) -> Path:
        return self.workdir / "markers" / f"ready-{index}"

    def _agent(self, index: int) -> Agent:
        env = agent_env(
            self.pods[index],
            self.tokens[index],
            {
                "GATE_CONDITION_TYPE": GATE,
                "GATE_FAILURE_THRESHOLD": "1",
                "GATE_EVENT_DRIVEN": "false",
                "CHECK_MARK_KIND": "file",
                "CHECK_MARK_PATH": str(self._marker(index)),
            },
        )
        return Agent(load_settings(env, require_api=True))

    def _schedule(self, count: int) -> list[tuple[float, int]]:
        slot = self.plan.window / self.plan.flips
        spread = max(0.0, slot - MIN_FLIP_SPACING)
        flips = [
            (k * slot + self.rng.uniform(0, spread), index)
            for index in range(count)
            for k in range(self.plan.flips)
        ]
        return sorted(flips)

    async def _wait_all(self, agents: Sequence[Agent], status: str, within: float) -> int:
        """Until every agent's condition on the server is ``status``; returns how many are not."""
        deadline = time.monotonic() + within
        while True:
            lagging = sum(1 for a in agents if _server_status(a) != status)
            if lagging == 0 or time.monotonic() > deadline:
                return lagging
            await asyncio.sleep(0.2)

    async def run_size(self, count: int) -> JSON:
        markers = self.workdir / "markers"
        markers.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            self._marker(index).unlink(missing_ok=True)
        rss_before = proc_sample(os.getpid())
        agents = [self._agent(i) for i in range(count)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop), name=f"scale-agent-{i}") for i, a in
                 enumerate(agents)]  # fmt: skip
        try:
            started = time.monotonic()
            lagging = await self._wait_all(agents, "False", within=180)
            if lagging:
                raise RuntimeError(f"{lagging} of {count} agents never wrote their condition")
            self.say(f"N={count}: all agents synchronised in {time.monotonic() - started:.1f} s")
            await asyncio.sleep(2.5)  # the first probe's write lands before the window
            transitions_before = sum(_transitions(a) for a in agents)
            schedule = self._schedule(count)
            apiserver = self.plane.components["kube-apiserver"].process
            assert apiserver is not None
            api_cpu = proc_sample(apiserver.pid)
            own_cpu = proc_sample(os.getpid())
            total_before = await asyncio.to_thread(apiserver_requests_total, self.plane)
            client_before = _client_patch_latency(agents)
            lags: list[float] = []
            lag_task = asyncio.create_task(_loop_lag(lags))
            start = time.time()
            await self._flip(schedule, start)
            lagging = await self._wait_all(agents, "False", within=60)
            end = time.time()
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
            client = _client_patch_latency(agents, client_before)
            total_after = await asyncio.to_thread(apiserver_requests_total, self.plane)
            api_cpu_after = proc_sample(apiserver.pid)
            own_cpu_after = proc_sample(os.getpid())
            transitions = sum(_transitions(a) for a in agents) - transitions_before
            longest = count == max(self.plan.sizes)
            at_rest = await self._rest(
                agents, self.plan.long_rest if longest else self.plan.rest, apiserver.pid
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        without = await self._rest([], self.plan.rest, apiserver.pid)
        await self.audit.settled()
        names = [p.name for p in self.pods[:count]]
        entries = self.audit.select(start=start, end=end, pods=names)
        patches = [e for e in entries if e.verb == "patch" and e.resource == "pods/status"]
        writes = sum(1 for e in entries if e.is_write)
        seconds = end - start
        assert api_cpu is not None
        assert api_cpu_after is not None
        assert own_cpu is not None
        assert own_cpu_after is not None
        assert rss_before is not None
        result: dict[str, Any] = {
            "agents": count,
            "window_seconds": seconds,
            "flips": len(schedule),
            "transitions": transitions,
            "lagging_agents": lagging,
            "requests": count_by(entries),
            "agent_requests": len(entries),
            "agent_request_rate": len(entries) / seconds,
            "apiserver_request_rate": (total_after - total_before) / seconds,
            "status_write_latency": summary([e.seconds for e in patches]),
            # the same PATCHes as the agents measured them (their histogram; p99 is the upper
            # bound of the bucket it falls in), and how late this process's event loop ran
            "status_write_client_mean": client["mean"],
            "status_write_client_p99_bucket": client["p99_bucket"],
            "event_loop_lag": summary(lags),
            "errors": sum(1 for e in entries if e.code >= 400),
            "error_codes": count_codes(e.code for e in entries if e.code >= 400),
            "status_writes_without_transition": len(patches) - transitions,
            "load_average_1min_at_end": LoadSampler.read()[0],
            "requests_per_transition": len(entries) / max(transitions, 1),
            "writes_per_transition": writes / max(transitions, 1),
            "status_writes_per_transition": len(patches) / max(transitions, 1),
            "requests_per_agent_per_minute": len(entries) / count / seconds * 60,
            "apiserver_cpu_millicores": 1000 * (api_cpu_after.cpu - api_cpu.cpu) / seconds,
            "agents_process_cpu_millicores_per_agent": 1000
            * (own_cpu_after.cpu - own_cpu.cpu)
            / seconds
            / count,
            "agents_process_rss_bytes_per_agent": (own_cpu_after.rss - rss_before.rss) / count,
            "apiserver_cpu_millicores_per_transition": 1000
            * (api_cpu_after.cpu - api_cpu.cpu)
            / max(transitions, 1),
            "at_rest": at_rest,
            "at_rest_without_agents": without,
        }
        self.say(
            f"N={count}: {len(entries)} requests from agents in {seconds:.0f} s, "
            f"{result['requests_per_transition']:.2f} per transition, status PATCH p99 "
            f"{(result['status_write_latency']['p99'] or 0) * 1000:.0f} ms"
        )
        return result

    async def _rest(self, agents: Sequence[Agent], seconds: float, apiserver: int) -> JSON:
        """The API server at rest for ``seconds``: CPU, RSS, and what the agents asked for (their
        own counts of reads and watches opened, as every watch request is one)."""
        before = proc_sample(apiserver)
        asked = sum(_api_calls(a) for a in agents)
        await asyncio.sleep(seconds)
        after = proc_sample(apiserver)
        assert before is not None
        assert after is not None
        requests = sum(_api_calls(a) for a in agents) - asked
        per_hour = requests / len(agents) / seconds * 3600 if agents else None
        return {
            "seconds": seconds,
            "agents": len(agents),
            "watching": sum(1 for a in agents if a.observer and a.observer.watching),
            "apiserver_cpu_millicores": 1000 * (after.cpu - before.cpu) / seconds,
            "apiserver_rss_bytes": after.rss,
            "agent_requests": requests,
            "requests_per_agent_per_hour": per_hour,
        }

    async def _flip(self, schedule: Sequence[tuple[float, int]], start: float) -> None:
        present: set[int] = set()
        for offset, index in schedule:
            delay = start + offset - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            marker = self._marker(index)
            if index in present:
                marker.unlink(missing_ok=True)
                present.discard(index)
            else:
                marker.write_text("ready\n")
                present.add(index)
        await asyncio.sleep(max(0.0, start + self.plan.window - time.time()))

    async def run(self) -> JSON:
        saved = structlog.get_config()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "agents.log").open("a")
        try:
            logs.configure("warning", log)
            provisioned = await self.provision()
            sizes = {}
            for count in self.plan.sizes:
                sizes[str(count)] = await self.run_size(count)
        finally:
            structlog.configure(**saved)
            log.close()
        costs = [s["requests_per_transition"] for s in sizes.values()]
        return {
            **provisioned,
            "flips_per_agent": self.plan.flips,
            "sizes": sizes,
            "cost_spread": max(costs) / min(costs) if min(costs) > 0 else float("nan"),
        }


async def _loop_lag(samples: list[float], interval: float = 0.05) -> None:
    """How much later than asked this process's event loop wakes up (all agents share it)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        samples.append(max(0.0, loop.time() - asked - interval))


def _client_patch_latency(agents: Sequence[Agent], since: JSON | None = None) -> JSON:
    """The agents' own ``api_request_duration_seconds{verb="patch"}`` histograms, summed."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for agent in agents:
        for metric in agent.registry.collect():
            if not metric.name.endswith("_api_request_duration_seconds"):
                continue
            for sample in metric.samples:
                if sample.labels.get("verb") != "patch":
                    continue
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    if since is not None:
        buckets = {b: n - since["buckets"].get(b, 0.0) for b, n in buckets.items()}
        total -= since["sum"]
        count -= since["count"]
    p99 = next((b for b in sorted(buckets) if count and buckets[b] >= 0.99 * count), None)
    return {"buckets": buckets, "sum": total, "count": count,
            "mean": total / count if count else None, "p99_bucket": p99}  # fmt: skip


def count_codes(codes: Iterable[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code in codes:
        counts[str(code)] = counts.get(str(code), 0) + 1
    return dict(sorted(counts.items()))


def _record(agent: Agent) -> Any:
    writer = agent.writer
    assert writer is not None
    return writer.status.gates.get(GATE)


def _server_status(agent: Agent) -> str | None:
    record = _record(agent)
    return None if record is None or record.server is None else str(record.server.status)


def _api_calls(agent: Agent) -> int:
    """Reads, watches opened and writes so far."""
    observer, writer = agent.observer, agent.writer
    if observer is None or writer is None:
        return 0
    return observer.reads + observer.watches + writer.status.writes


def _transitions(agent: Agent) -> int:
    record = _record(agent)
    return 0 if record is None else int(record.transitions)
