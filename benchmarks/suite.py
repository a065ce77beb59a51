"""The whole suite against one running control plane: every section, then rows and the table.

``run_suite`` is what ``python -m benchmarks`` runs inside ``ControlPlane.started()``, and what
the smoke test runs with the test session's control plane.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from benchmarks.cluster import (
    Observer,
    audit_sentinel,
    drop_namespace,
    kube_version,
    make_namespace,
)
from benchmarks.common import JSON, AuditLog, LoadSampler, machine
from benchmarks.idle import IdleBench
from benchmarks.latency import LatencyBench
from benchmarks.logfollow import LogFollowBench
from benchmarks.repair import RepairBench
from benchmarks.report import build_rows
from benchmarks.restart import RestartBench
from benchmarks.scale import ScaleBench
from benchmarks.stdout import StdoutBench
from tests.harness.cluster import ControlPlane

SECTIONS = ("latency", "idle", "log_throughput", "scale", "repair", "restart", "stdout")
#: Sections the smoke run (CI) leaves out: the real node has its own test tier there.
NOT_IN_SMOKE = ("restart", "stdout")


async def run_suite(
    plane: ControlPlane,
    *,
    smoke: bool,
    workdir: Path,
    out: TextIO = sys.stderr,
    sections: tuple[str, ...] = SECTIONS,
) -> JSON:
    """Run ``sections`` (all by default) and return the results (with ``rows`` when complete)."""
    everything = all_sections(smoke)
    sections = tuple(s for s in sections if s in everything)
    began, wall = time.monotonic(), datetime.now(UTC)
    load = LoadSampler()
    load_task = asyncio.create_task(load.run())
    audit = AuditLog(plane.workdir / "audit.log", functools.partial(audit_sentinel, plane))
    tag = uuid.uuid4().hex[:6]
    namespace = f"bench-{tag}"
    scale_namespace = f"bench-scale-{tag}"
    await asyncio.to_thread(make_namespace, plane, namespace)
    observer = Observer(plane, namespace)
    watching = asyncio.Event()
    observer_task = asyncio.create_task(observer.run(watching))
    await asyncio.wait_for(watching.wait(), 30)
    results: dict[str, JSON] = {}
    timing: dict[str, JSON] = {}

    async def section(name: str, run: Callable[[], Awaitable[JSON]]) -> None:
        if name not in sections:
            return
        print(f"== {name}", file=out, flush=True)
        start, clock = time.time(), time.monotonic()
        results[name] = await run()
        timing[name] = {"seconds": time.monotonic() - clock, **load.between(start, time.time())}

    try:
        await section(
            "latency",
            LatencyBench(plane, namespace, observer, workdir / "latency", smoke=smoke,
                         out=out).run,
        )  # fmt: skip
        idle = IdleBench(plane, namespace, observer, audit, workdir / "idle", smoke=smoke, out=out)
        try:
            await section("idle", idle.run)
        finally:
            await idle.close()
        await section("log_throughput", LogFollowBench(workdir, smoke=smoke, out=out).run)

        async def scale() -> JSON:
            await asyncio.to_thread(make_namespace, plane, scale_namespace)
            return await ScaleBench(plane, scale_namespace, audit, workdir, smoke=smoke,
                                    out=out).run()  # fmt: skip

        await section("scale", scale)
        await section(
            "repair",
            RepairBench(plane, namespace, observer, workdir, smoke=smoke, out=out).run,
        )
        await section("restart", RestartBench(plane, namespace, workdir, smoke=smoke, out=out).run)
        await section("stdout", StdoutBench(plane, namespace, workdir, smoke=smoke, out=out).run)
    finally:
        for task in (observer_task, load_task):
            task.cancel()
        await asyncio.gather(observer_task, load_task, return_exceptions=True)
        for name in (namespace, scale_namespace):
            await asyncio.to_thread(drop_namespace, plane, name)
    report: JSON = {
        "schema": 1,
        "mode": "smoke" if smoke else "full",
        "command": "python -m benchmarks"
        + (" --smoke" if smoke else "")
        + ("" if set(sections) == set(everything) else "".join(f" --only {s}" for s in sections)),
        "started_at": wall.isoformat(timespec="seconds"),
        "duration_seconds": time.monotonic() - began,
        "machine": machine(await asyncio.to_thread(kube_version, plane)),
        "load_average": load.figures(),
        "section_timing": timing,
        "observer": {"events": observer.events, "reconnects": observer.reconnects},
        "sections": results,
    }
    if set(sections) == set(everything):
        report["rows"] = build_rows(report)
    return report


def all_sections(smoke: bool) -> tuple[str, ...]:
    return tuple(s for s in SECTIONS if not (smoke and s in NOT_IN_SMOKE))


def _run(results: JSON) -> JSON:
    """What ``runs`` keeps of one run: when, which sections, how loaded the machine was."""
    return {
        "started_at": results["started_at"],
        "command": results["command"],
        "sections": sorted(results["sections"], key=SECTIONS.index),
        "duration_seconds": results["duration_seconds"],
        "load_average": results["load_average"],
        "machine": results["machine"],
    }


def merge_results(earlier: JSON, new: JSON) -> JSON:
    """``earlier`` with the sections of ``new`` replaced; ``runs`` says where each comes from."""
    if earlier["mode"] != new["mode"]:
        raise ValueError(f"cannot merge a {new['mode']} run into a {earlier['mode']} one")
    runs = []
    for run in earlier.get("runs") or [_run(earlier)]:
        kept = [section for section in run["sections"] if section not in new["sections"]]
        if kept:
            runs.append({**run, "sections": kept})
    merged: JSON = {
        **earlier,
        **{key: new[key] for key in ("started_at", "duration_seconds", "machine", "load_average")},
        "command": new["command"] + " --merge",
        "section_timing": {**earlier["section_timing"], **new["section_timing"]},
        "observer": new["observer"],
        "sections": {**earlier["sections"], **new["sections"]},
        "runs": [*runs, _run(new)],
    }
    merged.pop("rows", None)
    if set(merged["sections"]) == set(SECTIONS):
        merged["rows"] = build_rows(merged)
    return merged
