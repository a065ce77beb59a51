"""4. Log throughput: how fast the real log check follows a file while matching its regexes,
compared in the same run with ``tail -n +1 -F FILE | grep --line-buffered -E PATTERN``.

Capacity
    A separate writer process fills a file with ``lines`` realistic log lines that match neither
    the ready pattern nor the fail pattern, then one ready line. A fresh
    ``sidecar.checks.log.LogCheck`` (the agent's own class, in a child process of its own) probes it
    until a probe decides (probes while it is still reading are inconclusive): it reads the whole
    file, in the agent's 1 MiB batches, through both regexes.
    lines / wall time of that probe, best of ``repeats`` (the page cache is warm for all but the
    first; the same holds for tail | grep, measured the same way until the ready line comes out).

Live, at 10 MB/s
    The writer appends 100 KB blocks every 10 ms for ``seconds`` seconds, with a *tick* line —
    a ready line that carries its write time — every 0.25 s and one at the very end. The follower
    is the whole agent (``sidecar.runtime.Agent`` with ``GATE_WRITE=false``: inotify wake-ups, the
    prober, the log check), in a child process; each time the check's latest match changes, the
    lag is the match's ``seen_at`` (the agent's clock when it applied the line) minus the tick's
    write time. For ``tail | grep`` the lag is when its output line arrived here minus the same.
    "Keeps up" means the final line's lag and the p99 tick lag both stay within 250 ms (the log
    check's p99 latency target).

First scan of a big log (an agent restart)
    A file of ``big_size`` bytes (1 GiB; 64 MiB in ``--smoke``) of the same filler lines, then
    one ready line, in the benchmark's temporary directory (deleted afterwards). A fresh
    ``LogCheck`` in a child process is probed back to back by the prober's own ``probe`` (default
    timeout 1 s) until a probe decides: probes while the check is still reading are
    inconclusive (the check stays pending, a True gate stays True); none may fail. Scan rate =
    bytes / wall time to the verdict; peak RSS = the child's ``VmHWM`` (and VmRSS just before
    the scan); the event loop's lag = how late a 10 ms sleep in the same loop woke, at most
    (matching big batches runs on the check's own thread). Baseline on the same file, same run:
    ``grep -c -E`` with the same patterns.

Run as a script, this module is the writer and the follower child:
``python -m benchmarks.logfollow write|capacity|live|scan ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from benchmarks.apps import FAIL_PATTERN, GREP_PATTERN, PATTERN
from benchmarks.common import JSON, percentile, summary

TICK_EVERY = 0.25
BLOCK_EVERY = 0.01
RATE = 10_000_000  # bytes per second
KEEP_UP = 0.25  # seconds: what "keeps up" allows
TICK = re.compile(r"\[tick (\w+) at ([0-9.]+)\]")
GREP_BOTH = f"{GREP_PATTERN}|SEVERE|Shutting down"


def filler(count: int, start: int = 0) -> bytes:
    """``count`` lines like a busy Java service's log (about 110 bytes each), matching nothing."""
    lines = []
    for n in range(start, start + count):
        lines.append(
            f"2024-11-26 16:40:{n % 60:02d},{n % 1000:03d} INFO  [http-nio-8080-exec-{n % 16}] "
            f"com.example.shop.OrderService - order {n} processed in {n % 97} ms\n"
        )
    return "".join(lines).encode()


def tick_line(label: str, at: float) -> bytes:
    return (
        f"2024-11-26 16:40:00,000 INFO  [main] org.apache.catalina.startup.Catalina.start "
        f"Server startup in 1 ms [tick {label} at {at:.6f}]\n"
    ).encode()


# --- the writer (child process) -----------------------------------------------------------------


def write_bulk(path: Path, lines: int) -> JSON:
    chunk_lines = 10_000
    started = time.time()
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        for first in range(0, lines, chunk_lines):
            block = filler(min(chunk_lines, lines - first), first)
            os.write(fd, block)
            written += len(block)
        final = tick_line("final", time.time())
        os.write(fd, final)
        written += len(final)
    finally:
        os.close(fd)
    return {"lines": lines + 1, "bytes": written, "seconds": time.time() - started}


def write_size(path: Path, size: int) -> JSON:
    """``size`` bytes of filler lines, then one ready line."""
    started = time.time()
    block = filler(10_000)
    written = lines = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        while written < size:
            os.write(fd, block)
            written += len(block)
            lines += 10_000
        final = tick_line("final", time.time())
        os.write(fd, final)
        written += len(final)
    finally:
        os.close(fd)
    return {"lines": lines + 1, "bytes": written, "seconds": time.time() - started}


def write_paced(path: Path, seconds: float, rate: float) -> JSON:
    block = filler(max(1, int(rate * BLOCK_EVERY / 110)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lines = written = ticks = 0
    block_lines = block.count(b"\n")
    try:
        started = time.monotonic()
        next_block = next_tick = started
        while (now := time.monotonic()) < started + seconds:
            if now >= next_tick:
                os.write(fd, tick_line(str(ticks), time.time()))
                ticks += 1
                lines += 1
                next_tick += TICK_EVERY
            os.write(fd, block)
            written += len(block)
            lines += block_lines
            next_block += BLOCK_EVERY
            delay = next_block - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - started
        final_at = time.time()
        os.write(fd, tick_line("final", final_at))
        lines += 1
    finally:
        os.close(fd)
    return {
        "lines": lines,
        "bytes": written,
        "seconds": elapsed,
        "bytes_per_second": written / elapsed,
        "lines_per_second": lines / elapsed,
        "ticks": ticks,
        "final_at": final_at,
    }


# --- the agent's side (child process) -----------------------------------------------------------


def _settings(path: Path) -> Any:
    from sidecar.config import load_settings  # noqa: PLC0415

    return load_settings(
        {
            "CHECK_LOG_KIND": "log",
            "CHECK_LOG_PATH": str(path),
            "CHECK_LOG_PATTERN": PATTERN,
            "CHECK_LOG_FAIL_PATTERN": FAIL_PATTERN,
            "GATE_WRITE": "false",
            "GATE_HTTP_ADDRESS": "127.0.0.1:0",
            "GATE_LOG_LEVEL": "warning",
        },
        require_api=False,
    )


async def agent_capacity(path: Path) -> JSON:
    from sidecar.checks import build_check  # noqa: PLC0415
    from sidecar.clock import SystemClock  # noqa: PLC0415

    settings = _settings(path)
    check = build_check(settings.checks[0], SystemClock())
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        result = await check.probe()
        while result.inconclusive:  # still reading: probe again, as the prober would
            result = await check.probe()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await check.aclose()
    return {"seconds": wall, "cpu_seconds": cpu, "ok": result.ok, "detail": result.detail}


def _vm(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process, in bytes. (Not ``ru_maxrss``: Linux
    carries it across ``execve``, so a child would report its parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


async def _loop_lag(worst: list[float]) -> None:
    """Record in ``worst[0]`` how late a 10 ms sleep wakes, at most, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], loop.time() - before - 0.01)


async def agent_scan(path: Path) -> JSON:
    from sidecar.checks import build_check  # noqa: PLC0415
    from sidecar.clock import SystemClock  # noqa: PLC0415
    from sidecar.prober import probe  # noqa: PLC0415

    clock = SystemClock()
    spec = _settings(path).checks[0]
    check = build_check(spec, clock)
    rss_before = _vm("VmRSS")
    worst = [0.0]
    lag = asyncio.create_task(_loop_lag(worst))
    inconclusive = failed = 0
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        while True:
            result = await probe(check, clock)
            if not result.inconclusive:
                break
            inconclusive += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
        await check.aclose()
    failed = 0 if result.ok else 1
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "ok": result.ok,
        "detail": result.detail,
        "probes": inconclusive + 1,
        "inconclusive_probes": inconclusive,
        "failed_probes": failed,
        "timeout_seconds": spec.timing.timeout,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": _vm("VmHWM"),
        "max_loop_lag_seconds": worst[0],
    }


async def agent_live(path: Path, within: float) -> JSON:
    from sidecar import logs  # noqa: PLC0415
    from sidecar.checks.log import LogCheck  # noqa: PLC0415
    from sidecar.runtime import Agent  # noqa: PLC0415

    logs.configure("warning", sys.stderr)
    agent = Agent(_settings(path))
    check = agent.checks[0]
    assert isinstance(check, LogCheck)
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    seen: list[dict[str, Any]] = []
    try:
        for _ in range(3000):  # the endpoints listen once everything is wired
            if agent.server.addresses:
                break
            await asyncio.sleep(0.01)
        print("ready", flush=True)  # the parent starts the writer now
        deadline = time.monotonic() + within
        last = None
        cpu = time.process_time()
        while time.monotonic() < deadline:
            match = check.match
            if match is not None and match is not last:
                last = match
                found = TICK.search(match.line)
                if found:
                    seen.append(
                        {"tick": found[1], "lag": match.seen_at - float(found[2]),
                         "at": match.seen_at}
                    )  # fmt: skip
                    if found[1] == "final":
                        break
            await asyncio.sleep(0.002)
        cpu = time.process_time() - cpu
    finally:
        stop.set()
        await runner
    return {"seen": seen, "cpu_seconds": cpu}


def _child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logfollow")
    parser.add_argument("mode", choices=("write", "capacity", "live", "scan"))
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=0)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=RATE)
    args = parser.parse_args(argv)
    if args.mode == "write" and args.size:
        result = write_size(args.path, args.size)
    elif args.mode == "write" and args.lines:
        result = write_bulk(args.path, args.lines)
    elif args.mode == "write":
        result = write_paced(args.path, args.seconds, args.rate)
    elif args.mode == "capacity":
        result = asyncio.run(agent_capacity(args.path))
    elif args.mode == "scan":
        result = asyncio.run(agent_scan(args.path))
    else:
        result = asyncio.run(agent_live(args.path, args.seconds + 30))
    print(json.dumps(result), flush=True)


# --- the parent ---------------------------------------------------------------------------------


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.logfollow", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


async def _result(process: subprocess.Popen[str], within: float = 300) -> JSON:
    out, _ = await asyncio.to_thread(process.communicate, None, within)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} failed ({process.returncode}): {out[-2000:]}")
    parsed: JSON = json.loads(out.strip().splitlines()[-1])
    return parsed


class Pipeline:
    """``tail -n +1 -F path | grep --line-buffered -E pattern``; output lines timed on arrival."""

    def __init__(self, path: Path) -> None:
        command = f"exec tail -n +1 -F {path} 2>/dev/null | grep --line-buffered -E '{GREP_BOTH}'"
        self.started = time.time()
        self.process = subprocess.Popen(
            ["sh", "-c", command],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.final = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.lines.append((time.time(), line))
            if "[tick final at" in line:
                self.final.set()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _lags(seen: list[tuple[str, float]], final_label: str = "final") -> JSON:
    """Tick lags in seconds: summary, the final line's lag, and how many ticks were seen."""
    lags = [lag for _, lag in seen]
    final = next((lag for label, lag in seen if label == final_label), None)
    return {
        "ticks_seen": len(seen),
        "lag": summary(lags),
        "final_lag": final,
        "max_lag": max(lags) if lags else None,
        "p99_lag": percentile(lags, 99) if lags else None,
    }


class LogFollowBench:
    def __init__(self, workdir: Path, *, smoke: bool, out: TextIO = sys.stderr) -> None:
        self.dir = workdir / "logfollow"
        self.smoke = smoke
        self.lines = 200_000 if smoke else 3_000_000
        self.big_size = (64 if smoke else 1024) * 1024 * 1024
        self.seconds = 3.0 if smoke else 10.0
        self.repeats = 1 if smoke else 3
        self.out = out

    def say(self, text: str) -> None:
        print(f"[log throughput] {text}", file=self.out, flush=True)

    async def capacity(self) -> JSON:
        path = self.dir / "capacity.log"
        written = await _result(_child("write", "--path", str(path), "--lines", str(self.lines)))
        self.say(f"{written['lines']} lines, {written['bytes'] / 1e6:.0f} MB written")
        agent_runs: list[JSON] = []
        for _ in range(self.repeats):
            run = await _result(_child("capacity", "--path", str(path)))
            if not run["ok"]:
                raise RuntimeError(f"the log check missed the ready line: {run['detail']}")
            agent_runs.append(run)
        grep_runs: list[float] = []
        for _ in range(self.repeats):
            pipeline = Pipeline(path)
            try:
                if not await asyncio.to_thread(pipeline.final.wait, 120):
                    raise RuntimeError("tail | grep never printed the ready line")
                grep_runs.append(pipeline.lines[-1][0] - pipeline.started)
            finally:
                await asyncio.to_thread(pipeline.stop)
        path.unlink(missing_ok=True)
        best = min(agent_runs, key=lambda r: float(r["seconds"]))
        lines = written["lines"]
        return {
            "lines": lines,
            "bytes": written["bytes"],
            "agent_seconds": [r["seconds"] for r in agent_runs],
            "agent_lines_per_second": lines / best["seconds"],
            "agent_lines_per_cpu_second": lines / max(best["cpu_seconds"], 1e-9),
            "agent_mb_per_second": written["bytes"] / best["seconds"] / 1e6,
            "tail_grep_seconds": grep_runs,
            "tail_grep_lines_per_second": lines / min(grep_runs),
        }

    async def big_scan(self) -> JSON:
        path = self.dir / "big.log"
        try:
            written = await _result(
                _child("write", "--path", str(path), "--size", str(self.big_size)), within=900
            )
            self.say(f"{written['bytes'] / 2**20:.0f} MiB written in {written['seconds']:.1f} s")
            scan = await _result(_child("scan", "--path", str(path)), within=900)
            if not scan["ok"]:
                raise RuntimeError(f"the log check missed the ready line: {scan['detail']}")
            started = time.perf_counter()
            grep = await asyncio.to_thread(
                subprocess.run,
                ["grep", "-c", "-E", GREP_BOTH, str(path)],
                capture_output=True,
                check=False,
            )
            grep_seconds = time.perf_counter() - started
            if grep.returncode != 0 or int(grep.stdout) != 1:
                raise RuntimeError(f"grep -c found {grep.stdout!r} lines: {grep.stderr!r}")
        finally:
            path.unlink(missing_ok=True)
        size = written["bytes"]
        return {
            **scan,
            "bytes": size,
            "lines": written["lines"],
            "mb_per_second": size / scan["seconds"] / 1e6,
            "lines_per_second": written["lines"] / scan["seconds"],
            "grep_seconds": grep_seconds,
            "grep_mb_per_second": size / grep_seconds / 1e6,
        }

    async def live_agent(self) -> JSON:
        path = self.dir / "live-agent.log"
        path.write_bytes(b"")  # exists before the follower starts (see live_tail_grep)
        follower = _child("live", "--path", str(path), "--seconds", str(self.seconds))
        assert follower.stdout is not None
        first = await asyncio.to_thread(follower.stdout.readline)
        if first.strip() != "ready":
            follower.kill()
            raise RuntimeError(f"the follower did not start: {first!r}")
        writer = await _result(_child("write", "--path", str(path), "--seconds", str(self.seconds)))
        followed = await _result(follower)
        path.unlink(missing_ok=True)
        seen = [(s["tick"], s["lag"]) for s in followed["seen"]]
        return {"writer": writer, **_lags(seen), "cpu_seconds": followed["cpu_seconds"]}

    async def live_tail_grep(self) -> JSON:
        path = self.dir / "live-grep.log"
        # The file exists before tail starts: GNU tail -F (coreutils 9.1) follows a file that only
        # appears later by polling it once a second instead of with inotify.
        path.write_bytes(b"")
        pipeline = Pipeline(path)
        try:
            await asyncio.sleep(0.5)
            writer = await _result(
                _child("write", "--path", str(path), "--seconds", str(self.seconds))
            )
            await asyncio.to_thread(pipeline.final.wait, 30)
        finally:
            await asyncio.to_thread(pipeline.stop)
        path.unlink(missing_ok=True)
        seen = []
        for arrived, line in pipeline.lines:
            if found := TICK.search(line):
                seen.append((found[1], arrived - float(found[2])))
        return {"writer": writer, **_lags(seen)}

    async def run(self) -> JSON:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say(f"capacity: {self.lines} lines, best of {self.repeats}")
        capacity = await self.capacity()
        self.say(f"live: {RATE / 1e6:g} MB/s for {self.seconds:g} s, the agent then tail | grep")
        agent = await self.live_agent()
        grep = await self.live_tail_grep()
        self.say(f"first scan of a {self.big_size / 2**20:.0f} MiB log, then grep -c")
        big = await self.big_scan()
        return {"capacity": capacity, "live_agent": agent, "live_tail_grep": grep,
                "big_scan": big, "keep_up_limit_seconds": KEEP_UP,
                "rate_bytes_per_second": RATE}  # fmt: skip


if __name__ == "__main__":
    _child_main(sys.argv[1:])
