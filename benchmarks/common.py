"""Shared pieces: statistics, process accounting, the machine, the load average, the audit log.

Everything here is synchronous and small; the sections (``latency``, ``apicost``, ``footprint``,
``logfollow``, ``scale``) build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default does."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> JSON:
    """n, p50, p95, p99, min, max, mean of ``values`` (``None`` for each when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "min": None, "max": None,
                "mean": None}  # fmt: skip
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def ms(seconds: float | None) -> str:
    """A duration for the table: ``12 ms``, ``1.53 s``; ``n/a`` for nothing."""
    if seconds is None or math.isnan(seconds):
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def triple(stats: JSON) -> str:
    """``p50 / p95 / p99`` of a :func:`summary`."""
    return " / ".join(ms(stats.get(k)) for k in ("p50", "p95", "p99"))


# --- time ---------------------------------------------------------------------------------------


def parse_time(stamp: str) -> float:
    """An RFC 3339 timestamp (``...Z``, any precision) as epoch seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at /proc/<pid>: when, CPU seconds so far (own, and of reaped children), memory."""

    at: float
    cpu: float
    children_cpu: float
    rss: int
    hwm: int
    sched: float  # seconds on a CPU, summed over the live threads (/proc/<pid>/task/*/schedstat)
    threads: int


def proc_sample(pid: int) -> ProcSample | None:
    """utime+stime (and cutime+cstime) from /proc/<pid>/stat, VmRSS and VmHWM from status."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    memory = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            memory[key] = int(value)
    sched = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                sched += int((task / "schedstat").read_text().split()[0])
    return ProcSample(
        at=time.monotonic(),
        cpu=(utime + stime) / CLK_TCK,
        children_cpu=(cutime + cstime) / CLK_TCK,
        rss=memory.get("VmRSS", 0),
        hwm=memory.get("VmHWM", 0),
        sched=sched / 1e9,
        threads=memory.get("Threads", 0),
    )


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (via /proc/<pid>/task/<pid>/children)."""
    pids = [root]
    with contextlib.suppress(OSError, ValueError):
        for child in Path(f"/proc/{root}/task/{root}/children").read_text().split():
            pids += process_tree(int(child))
    return pids


@dataclass(slots=True)
class ProcWatcher:
    """Samples one process every ``interval`` seconds (in the event loop) until stopped."""

    pid: int
    samples: list[ProcSample] = field(default_factory=list)

    async def run(self, interval: float) -> None:
        while True:
            sample = await asyncio.to_thread(proc_sample, self.pid)
            if sample is not None:
                self.samples.append(sample)
            await asyncio.sleep(interval)

    def figures(self, *, include_children: bool = False) -> JSON:
        """Average CPU (millicores) over the sampled span, last and peak RSS (bytes)."""
        if len(self.samples) < 2:
            return {"cpu_millicores": math.nan, "sched_millicores": math.nan,
                    "rss_bytes": math.nan, "rss_max_bytes": math.nan, "hwm_bytes": math.nan,
                    "threads": 0, "seconds": 0.0}  # fmt: skip
        first, last = self.samples[0], self.samples[-1]
        cpu = last.cpu - first.cpu
        if include_children:
            cpu += last.children_cpu - first.children_cpu
        span = last.at - first.at
        return {
            "cpu_millicores": 1000.0 * cpu / span,
            # the same from the scheduler's nanosecond accounting (utime+stime count 10 ms ticks)
            "sched_millicores": 1000.0 * (last.sched - first.sched) / span,
            "cpu_seconds": cpu,
            "rss_bytes": float(last.rss),
            "rss_max_bytes": float(max(s.rss for s in self.samples)),
            "hwm_bytes": float(last.hwm),
            "threads": last.threads,
            "seconds": span,
        }


# --- the machine --------------------------------------------------------------------------------


def machine(kube_version: str) -> JSON:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total = next(
        (int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal")), 0
    )
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_bytes": total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kubernetes": kube_version,
    }


class LoadSampler:
    """Samples /proc/loadavg every few seconds for the whole run (other work shares the machine)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float, float]] = []

    @staticmethod
    def read() -> tuple[float, float, float]:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
        return float(one), float(five), float(fifteen)

    async def run(self, interval: float = 5.0) -> None:
        while True:
            self.samples.append((time.time(), *self.read()))
            await asyncio.sleep(interval)

    def figures(self) -> JSON:
        ones = [s[1] for s in self.samples] or [self.read()[0]]
        return {
            "samples": len(self.samples),
            "load1_min": min(ones),
            "load1_mean": sum(ones) / len(ones),
            "load1_max": max(ones),
            "load1_p50": percentile(ones, 50),
            "at_start": list(self.samples[0][1:]) if self.samples else list(self.read()),
            "at_end": list(self.read()),
        }

    def between(self, start: float, end: float) -> JSON:
        """min / mean / max of the 1-minute load average sampled in [start, end]."""
        ones = [s[1] for s in self.samples if start <= s[0] <= end] or [self.read()[0]]
        return {"load1_min": min(ones), "load1_mean": sum(ones) / len(ones),
                "load1_max": max(ones)}  # fmt: skip


# --- the API server's audit log -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One completed request, as the API server logged it."""

    username: str
    pod: str | None  # the Pod a bound ServiceAccount token belongs to
    user_agent: str
    verb: str
    resource: str  # e.g. "pods", "pods/status", "events"
    namespace: str | None
    name: str | None
    code: int
    received: float  # requestReceivedTimestamp, epoch seconds
    completed: float  # stageTimestamp of ResponseComplete

    @property
    def seconds(self) -> float:
        return self.completed - self.received

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete")


def _entry(raw: JSON) -> AuditEntry | None:
    if raw.get("stage") != "ResponseComplete":
        return None
    user = raw.get("user") or {}
    ref = raw.get("objectRef") or {}
    pods = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name") or []
    resource = str(ref.get("resource", ""))
    if ref.get("subresource"):
        resource += "/" + str(ref["subresource"])
    return AuditEntry(
        username=str(user.get("username", "")),
        pod=pods[0] if pods else None,
        user_agent=str(raw.get("userAgent", "")),
        verb=str(raw.get("verb", "")),
        resource=resource,
        namespace=ref.get("namespace"),
        name=ref.get("name"),
        code=int((raw.get("responseStatus") or {}).get("code", 0)),
        received=parse_time(raw["requestReceivedTimestamp"]),
        completed=parse_time(raw["stageTimestamp"]),
    )


class AuditLog:
    """Reads ``<workdir>/audit.log`` (JSON lines) incrementally, from where the run started.

    The API server writes it in batches (``--audit-log-batch-max-wait=1s``), in the order the
    requests completed. :meth:`settled` makes a request of its own (``sentinel``: a GET of a Pod
    that does not exist, which is audited too) after the requests of interest and reads until
    that request shows up: everything before it has been written by then.
    """

    def __init__(self, path: Path, sentinel: Callable[[str], None]) -> None:
        self.path = path
        self._sentinel = sentinel
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""
        self.entries: list[AuditEntry] = []

    def refresh(self) -> list[AuditEntry]:
        """Read what was appended since the last call; returns the new entries."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:  # rotated (--audit-log-maxsize): start over in the new file
            self._offset, self._partial = 0, b""
        with self.path.open("rb") as stream:
            stream.seek(self._offset)
            data = self._partial + stream.read()
        self._offset = size
        *lines, self._partial = data.split(b"\n")
        new = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError):
                entry = _entry(json.loads(line))
                if entry is not None:
                    new.append(entry)
        self.entries.extend(new)
        return new

    async def settled(self, within: float = 30.0) -> list[AuditEntry]:
        """Read until everything requested before this call is in (see the class doc)."""
        name = f"audit-sentinel-{uuid.uuid4().hex[:12]}"
        await asyncio.to_thread(self._sentinel, name)
        new: list[AuditEntry] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            new += await asyncio.to_thread(self.refresh)
            if any(e.name == name for e in new):
                return new
        raise TimeoutError(f"the audit log did not show the request for {name} in {within} s")

    def select(
        self,
        *,
        start: float,
        end: float,
        pods: Iterable[str] | None = None,
        username_prefix: str = "system:serviceaccount:",
    ) -> list[AuditEntry]:
        """Requests received in [start, end] by ServiceAccount tokens (bound to one of ``pods``)."""
        wanted = None if pods is None else set(pods)
        return [
            e
            for e in self.entries
            if start <= e.received <= end
            and e.username.startswith(username_prefix)
            and (wanted is None or e.pod in wanted)
        ]


def count_by(entries: Iterable[AuditEntry]) -> dict[str, int]:
    """``{"patch pods/status": 3, "get pods": 1, ...}``."""
    counts: dict[str, int] = {}
    for entry in entries:
        key = f"{entry.verb} {entry.resource}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def finite_numbers(value: object, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON-like value, with its path (the smoke test checks them)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield path, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from finite_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from finite_numbers(item, f"{path}[{index}]")


def jsonable(value: object) -> object:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value
