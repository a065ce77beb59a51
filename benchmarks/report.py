"""Rows, targets and verdicts, and the markdown table (the same figures as the JSON).

A row is one line of the table: an id, a result, the same-run baseline (with a ratio), the target
and a verdict — ``met`` / ``missed`` for a row with a target, ``baseline`` for a baseline, ``info``
for a figure without a target. The numbers behind each row are in its ``figures`` (the JSON).
Targets are fixed here; a missed target is reported as missed, never relaxed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from benchmarks.apps import KINDS
from benchmarks.common import JSON, ms, triple
from benchmarks.latency import CONFIG_NAMES, FAST_KINDS
from benchmarks.scale import plan as scale_plan
from sidecar.config import FAST_PERIODS
from sidecar.model import CheckKind

MIB = 1024 * 1024
# --- targets ---
LATENCY_P50 = 0.050  # log and file checks: condition True, p50 ...
LATENCY_P99 = 0.250  # ... and p99
FAST_P50 = 0.150  # tcp and http checks (fast probes while not ready): condition True, p50 ...
FAST_P99 = 0.300  # ... and p99
RSS_LIMIT = 80 * MIB
CPU_LIMIT = 2.0  # millicores
LINES_PER_SECOND = 200_000
FLAT_SPREAD = 1.10  # per-agent cost across N: max / min
REPAIR_P50 = 0.050  # a foreign write undone: p50 ...
REPAIR_P99 = 0.250  # ... and p99
RESTART_P99 = 0.250  # the kubelet's status update after a restart -> the gate False


def expected_row_ids(smoke: bool) -> list[str]:
    sizes = scale_plan(smoke).sizes
    return [
        "run.load",
        *(f"latency.{kind}.{config}" for kind in KINDS for config in CONFIG_NAMES),
        "api.transition.status_writes",
        "api.transition.writes_default",
        "api.transition.writes_noevents",
        "api.steady.writes",
        "api.steady.flaky",
        "api.steady.reads",
        "footprint.rss",
        "footprint.cpu",
        "footprint.overhead",
        "footprint.startup",
        *(f"waiting.{name}" for name in WAITING_ROWS),
        "throughput.capacity",
        "throughput.live",
        "throughput.big_scan",
        *(f"scale.n{n}" for n in sizes),
        *(f"scale.rest.n{n}" for n in sizes),
        "scale.flat",
        "repair.latency",
        *([] if smoke else ["restart.gate_false", "restart.ready_window", "stdout.latency"]),
    ]


def _row(
    row_id: str,
    name: str,
    result: str,
    *,
    baseline: str = "",
    target: str = "",
    verdict: str = "info",
    figures: Mapping[str, Any] | None = None,
) -> JSON:
    return {"id": row_id, "name": name, "result": result, "baseline": baseline, "target": target,
            "verdict": verdict, "figures": dict(figures or {})}  # fmt: skip


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _p50(row: JSON) -> float | None:
    value = row["condition_true"]["p50"]
    return None if value is None else float(value)


def _ratio(slow: float | None, fast: float | None) -> str:
    if not slow or not fast or math.isnan(slow) or math.isnan(fast) or fast <= 0:
        return "n/a"
    return f"x{slow / fast:.1f}"


# --- sections ----------------------------------------------------------------------------------


def latency_rows(latency: JSON) -> list[JSON]:
    rows = []
    table = latency["rows"]
    for kind in KINDS:
        agent = table[f"{kind}.agent"]
        agent_p50 = agent["condition_true"]["p50"]
        for config in CONFIG_NAMES:
            data = table[f"{kind}.{config}"]
            cond, ready, endpoint = (
                data["condition_true"],
                data["kubelet_ready"],
                data["endpoint_ready"],
            )
            result = (
                f"condition {triple(cond)} · Ready {triple(ready)} · endpoint {triple(endpoint)}"
                f" (p50/p95/p99, n={cond['n']}"
                + (f", {data['failures']} failed" if data["failures"] else "")
                + ")"
            )
            figures = {
                "trials": data["trials"],
                "failures": data["failures"],
                **{f"condition_{k}": _num(cond[k]) for k in ("p50", "p95", "p99", "max")},
                **{f"ready_{k}": _num(ready[k]) for k in ("p50", "p95", "p99")},
                **{f"endpoint_{k}": _num(endpoint[k]) for k in ("p50", "p95", "p99")},
                "kubelet_after_condition_p50": _num(data["kubelet_after_condition"]["p50"]),
            }
            if data["agent_detected"]["n"]:
                figures["agent_detected_p50"] = _num(data["agent_detected"]["p50"])
                figures["agent_written_p50"] = _num(data["agent_written"]["p50"])
            name = f"latency {kind} · {config}"
            if config == "agent":
                others = [
                    f"{other} {_ratio(_p50(table[f'{kind}.{other}']), agent_p50)}"
                    for other in CONFIG_NAMES
                    if other != "agent"
                ]
                baseline = "baselines' p50 slower: " + ", ".join(others)
                if data["agent_detected"]["n"]:
                    result += (
                        f"; inside the agent: detected {ms(data['agent_detected']['p50'])}, "
                        f"PATCH answered {ms(data['agent_written']['p50'])} (p50)"
                    )
                p50, p99 = _num(cond["p50"]), _num(cond["p99"])
                complete = data["failures"] == 0 and cond["n"] == data["trials"] > 0
                p50_limit, p99_limit = (
                    (FAST_P50, FAST_P99) if kind in FAST_KINDS else (LATENCY_P50, LATENCY_P99)
                )
                target = f"p50 ≤ {ms(p50_limit)}, p99 ≤ {ms(p99_limit)}"
                ok = complete and p50 <= p50_limit and p99 <= p99_limit
                rows.append(
                    _row(f"latency.{kind}.{config}", name, result, baseline=baseline,
                         target=target, verdict=_verdict(ok), figures=figures)
                )  # fmt: skip
            else:
                baseline = f"p50 {_ratio(cond['p50'], agent_p50)} the agent's"
                rows.append(
                    _row(f"latency.{kind}.{config}", name, result, baseline=baseline,
                         verdict="baseline", figures=figures)
                )  # fmt: skip
    return rows


def api_rows(idle: JSON) -> list[JSON]:
    transitions = idle["transitions"]
    default, quiet = transitions["idle-steady"], transitions["idle-noevents"]
    window = idle["idle"]
    steady = window["steady"]["idle-steady"]
    shell = window["steady"]["idle-shell"]
    flaky = window["steady"]["idle-flaky"]
    hours = window["window_seconds"] / 3600
    expected_reads = window["expected_resync_reads"]
    only_gets = set(steady["requests"]) <= {"get pods"}
    return [
        _row(
            "api.transition.status_writes",
            "API: status writes per gate transition",
            f"{default['status_writes_per_transition']:.2f} PATCH pods/status per transition "
            f"(counts per transition: {_counts(default['status_writes'])})",
            target="exactly 1 write (PATCH pods/status) per transition",
            verdict=_verdict(
                default["exactly_one_status_write_each"] and quiet["exactly_one_status_write_each"]
            ),
            figures={
                "status_writes_per_transition": default["status_writes_per_transition"],
                "transitions": default["transitions"],
                "reads_per_transition": default["reads_per_transition"],
            },
        ),
        _row(
            "api.transition.writes_default",
            "API: all writes per transition, default settings (GATE_EVENTS=true)",
            f"{default['writes_per_transition']:.2f} writes = "
            f"{default['status_writes_per_transition']:.2f} PATCH pods/status + "
            f"{default['event_writes_per_transition']:.2f} POST events; "
            f"{default['reads_per_transition']:.2f} reads ({_requests(default['requests'])})",
            target="exactly 1 write per transition",
            verdict=_verdict(default["exactly_one_write_each"]),
            figures={
                "writes_per_transition": default["writes_per_transition"],
                "event_writes_per_transition": default["event_writes_per_transition"],
                "transitions": default["transitions"],
            },
        ),
        _row(
            "api.transition.writes_noevents",
            "API: all writes per transition, GATE_EVENTS=false",
            f"{quiet['writes_per_transition']:.2f} writes, {quiet['reads_per_transition']:.2f} "
            f"reads per transition ({_requests(quiet['requests'])})",
            target="exactly 1 write per transition",
            verdict=_verdict(quiet["exactly_one_write_each"]),
            figures={
                "writes_per_transition": quiet["writes_per_transition"],
                "transitions": quiet["transitions"],
            },
        ),
        _row(
            "api.steady.writes",
            "API: writes per hour in steady state",
            f"{steady['writes_per_hour']:.0f}/h ({steady['writes']} in "
            f"{window['window_seconds']:.0f} s, extrapolated)",
            baseline=f"shell loop: {shell['writes_per_hour']:.0f}/h "
            f"({shell['writes']} in the same window)",
            target="0 writes",
            verdict=_verdict(steady["writes"] == 0),
            figures={
                "writes_per_hour": steady["writes_per_hour"],
                "shell_loop_writes_per_hour": shell["writes_per_hour"],
                "window_seconds": window["window_seconds"],
            },
        ),
        _row(
            "api.steady.flaky",
            "API: writes at rest while single probes fail (fewer than the failure threshold)",
            f"{flaky['writes_per_hour']:.0f}/h ({flaky['writes']} writes in "
            f"{window['window_seconds']:.0f} s with {window['flaky_blips']} port drops, each "
            f"failing at most one probe; GATE_FAILURE_THRESHOLD=3{_requests_suffix(flaky)})",
            target="0 writes (the gate never changes)",
            verdict=_verdict(flaky["writes"] == 0),
            figures={
                "writes_per_hour": flaky["writes_per_hour"],
                "writes": flaky["writes"],
                "blips": window["flaky_blips"],
            },
        ),
        _row(
            "api.steady.reads",
            "API: reads per hour in steady state",
            f"{steady['reads_per_hour']:.0f}/h at GATE_RESYNC_SECONDS={window['resync_seconds']:g} "
            f"({steady['reads']} in {window['window_seconds']:.0f} s, extrapolated; "
            f"{_requests(steady['requests']) or 'none'}); at the default 300 s: "
            f"{3600 / 300:.0f}/h",
            baseline=f"shell loop: {shell['reads_per_hour']:.0f}/h",
            target=f"only the resync's GETs (≈{expected_reads:.1f} in the window)",
            verdict=_verdict(
                only_gets
                and math.floor(expected_reads) - 1 <= steady["reads"] <= math.ceil(expected_reads)
            ),
            figures={
                "reads_per_hour": steady["reads_per_hour"],
                "reads": steady["reads"],
                "expected_reads": expected_reads,
                "hours": hours,
            },
        ),
    ]


def _requests_suffix(data: Mapping[str, Any]) -> str:
    return f"; {_requests(data['requests'])}" if data["requests"] else ""


def _counts(values: Iterable[int]) -> str:
    values = list(values)
    return ", ".join(str(v) for v in values[:12]) + (" …" if len(values) > 12 else "")


def _requests(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n}x {k}" for k, n in counts.items())


def footprint_rows(idle: JSON) -> list[JSON]:
    usage = idle["idle"]["usage"]
    agent, bare, libs = usage["agent"], usage["floor_bare"], usage["floor_libs"]
    shell, periodic = usage["shell_loop"], usage["agent_periodic"]
    startup = idle["startup"]
    seconds = idle["idle"]["footprint_seconds"]
    rss, cpu = agent["rss_bytes"], agent["cpu_millicores"]
    return [
        _row(
            "footprint.rss",
            "footprint: resident memory of one idle agent (3 checks)",
            f"{rss / MIB:.1f} MiB VmRSS (peak {agent['hwm_bytes'] / MIB:.1f} MiB; "
            f"{agent['threads']} threads)",
            baseline=f"floor: python -c '' {bare['rss_bytes'] / MIB:.1f} MiB; "
            f"+ import kubernetes_asyncio, aiohttp {libs['rss_bytes'] / MIB:.1f} MiB",
            target=f"≤ {RSS_LIMIT / MIB:.0f} MiB",
            verdict=_verdict(rss <= RSS_LIMIT),
            figures={
                "rss_bytes": rss,
                "hwm_bytes": agent["hwm_bytes"],
                "floor_bare_rss_bytes": bare["rss_bytes"],
                "floor_libs_rss_bytes": libs["rss_bytes"],
            },
        ),
        _row(
            "footprint.cpu",
            "footprint: CPU of one idle agent (3 checks)",
            f"{cpu:.2f} millicores average over {seconds:.0f} s (utime+stime; the scheduler's "
            f"ns count: {agent['sched_millicores']:.2f})",
            baseline=f"floors {bare['cpu_millicores']:.2f} / {libs['cpu_millicores']:.2f} mc; "
            f"the agent with GATE_EVENT_DRIVEN=false {periodic['cpu_millicores']:.2f} mc "
            f"(sched {periodic['sched_millicores']:.2f}); "
            f"shell loop (with its grep, curl) {shell['cpu_millicores']:.1f} mc",
            target=f"≤ {CPU_LIMIT:g} millicores",
            verdict=_verdict(cpu <= CPU_LIMIT),
            figures={
                "cpu_millicores": cpu,
                "sched_millicores": agent["sched_millicores"],
                "periodic_agent_millicores": periodic["cpu_millicores"],
                "floor_bare_millicores": bare["cpu_millicores"],
                "floor_libs_millicores": libs["cpu_millicores"],
                "shell_loop_millicores": shell["cpu_millicores"],
                "seconds": seconds,
            },
        ),
        _row(
            "footprint.overhead",
            "footprint: the agent above the kubernetes_asyncio + aiohttp floor",
            f"+{(rss - libs['rss_bytes']) / MIB:.1f} MiB RSS, "
            f"+{cpu - libs['cpu_millicores']:.2f} millicores",
            figures={
                "rss_bytes": rss - libs["rss_bytes"],
                "cpu_millicores": cpu - libs["cpu_millicores"],
            },
        ),
        _row(
            "footprint.startup",
            "start-up: process start → first check result / first write",
            f"first check {ms(startup['first_check']['p50'])}, first write "
            f"{ms(startup['first_write']['p50'])}, first True written "
            f"{ms(startup['first_true_write']['p50'])} (p50 of {startup['first_check']['n']}; "
            f"max {ms(startup['first_write']['max'])})",
            figures={
                "first_check_p50": _num(startup["first_check"]["p50"]),
                "first_write_p50": _num(startup["first_write"]["p50"]),
                "first_true_write_p50": _num(startup["first_true_write"]["p50"]),
                "agent_started_p50": _num(startup["agent_started"]["p50"]),
            },
        ),
    ]


#: row id -> (scenario, its baseline scenario or None, what the app does while not ready)
WAITING_ROWS: Mapping[str, tuple[str, str | None, str]] = {
    "tcp_closed": ("tcp-closed", "tcp-closed-nofast", "a closed port that opens"),
    "tcp_loading": (
        "tcp-loading",
        None,
        "a Redis answering PING with -LOADING (expect ^\\+PONG), then +PONG",
    ),
    "http_closed": ("http-closed", "http-closed-nofast", "a closed port that opens"),
    "http_503": ("http-503", None, "a server answering 503, then 200"),
}


def waiting_rows(idle: JSON) -> list[JSON]:
    data = idle["waiting"]
    scenarios = data["scenarios"]
    rows = []
    for row_id, (name, baseline_name, what) in WAITING_ROWS.items():
        got = scenarios[name]
        fast = FAST_PERIODS[CheckKind(got["kind"])]
        limit = 1 / fast
        accepted = got["connections_accepted_per_second"]
        rate = got["probes_per_second"] if accepted is None else accepted
        # probes start at least a fast period apart; one may straddle each end of the window
        bounded = rate * got["seconds"] <= got["seconds"] / fast + 1
        counted = "connections/s" if accepted is None else "connections/s accepted by the app"
        result = (
            f"{rate:.2f} {counted} ({got['probes']:.0f} probes in {got['seconds']:.0f} s), "
            f"agent CPU {got['cpu_millicores']:.2f} millicores (sched "
            f"{got['sched_millicores']:.2f}); ready → condition True "
            f"{ms(got['condition_true_after_ready'])}"
        )
        figures = {
            "connections_per_second": rate,
            "probes_per_second": got["probes_per_second"],
            "cpu_millicores": got["cpu_millicores"],
            "sched_millicores": got["sched_millicores"],
            "condition_true_after_ready": _num(got["condition_true_after_ready"]),
            "seconds": got["seconds"],
        }
        baseline = ""
        if baseline_name is not None:
            base = scenarios[baseline_name]
            baseline = (
                f"GATE_FAST_PERIOD_SECONDS=0 (period 2 s): {base['probes_per_second']:.2f} "
                f"connections/s, {base['cpu_millicores']:.2f} millicores (sched "
                f"{base['sched_millicores']:.2f}); condition True "
                f"{ms(base['condition_true_after_ready'])}"
            )
            figures |= {
                "baseline_probes_per_second": base["probes_per_second"],
                "baseline_cpu_millicores": base["cpu_millicores"],
                "baseline_condition_true_after_ready": _num(base["condition_true_after_ready"]),
            }
        rows.append(
            _row(
                f"waiting.{row_id}",
                f"waiting: {got['kind']} check (defaults) on {what} after "
                f"{data['wait_seconds']:g} s",
                result,
                baseline=baseline,
                target=f"≤ {limit:.3g} connections/s (one per fast period, never more)",
                verdict=_verdict(bounded),
                figures=figures,
            )
        )
    return rows


def throughput_rows(data: JSON) -> list[JSON]:
    capacity = data["capacity"]
    agent, grep = data["live_agent"], data["live_tail_grep"]
    limit = data["keep_up_limit_seconds"]
    rate = capacity["agent_lines_per_second"]
    keeps_up = (
        agent["final_lag"] is not None
        and agent["final_lag"] <= limit
        and agent["p99_lag"] is not None
        and agent["p99_lag"] <= limit
    )
    writer = agent["writer"]
    return [
        _row(
            "throughput.capacity",
            "log check: lines per second followed while matching two regexes",
            f"{rate:,.0f} lines/s ({capacity['agent_mb_per_second']:.0f} MB/s; "
            f"{capacity['lines']:,} lines)",
            baseline=f"tail -F | grep: {capacity['tail_grep_lines_per_second']:,.0f} lines/s "
            f"(the agent {rate / capacity['tail_grep_lines_per_second']:.2f}x of that)",
            target=f"≥ {LINES_PER_SECOND:,} lines/s",
            verdict=_verdict(rate >= LINES_PER_SECOND),
            figures={
                "lines_per_second": rate,
                "tail_grep_lines_per_second": capacity["tail_grep_lines_per_second"],
                "lines_per_cpu_second": capacity["agent_lines_per_cpu_second"],
            },
        ),
        _row(
            "throughput.live",
            f"log check behind a {writer['bytes_per_second'] / 1e6:.1f} MB/s writer "
            f"({writer['seconds']:.0f} s)",
            f"last line detected after {ms(agent['final_lag'])}; tick lag p99 "
            f"{ms(agent['p99_lag'])}, max {ms(agent['max_lag'])} ({agent['ticks_seen']} ticks); "
            f"agent CPU {agent['cpu_seconds'] / writer['seconds'] * 1000:.0f} millicores",
            baseline=f"tail -F | grep: last line {ms(grep['final_lag'])}, p99 "
            f"{ms(grep['p99_lag'])}",
            target=f"keeps up: last line and p99 lag ≤ {ms(limit)}",
            verdict=_verdict(keeps_up),
            figures={
                "final_lag": _num(agent["final_lag"]),
                "p99_lag": _num(agent["p99_lag"]),
                "max_lag": _num(agent["max_lag"]),
                "tail_grep_final_lag": _num(grep["final_lag"]),
                "writer_bytes_per_second": writer["bytes_per_second"],
            },
        ),
    ]


def big_scan_row(big: JSON) -> JSON:
    seconds = big["seconds"]
    growth = big["peak_rss_bytes"] - big["rss_before_bytes"]
    return _row(
        "throughput.big_scan",
        f"log check: first scan of a {big['bytes'] / 2**30:.2g} GiB log (an agent restart)",
        f"{big['mb_per_second']:.0f} MB/s ({seconds:.1f} s, {big['lines_per_second']:,.0f} "
        f"lines/s); peak RSS {big['peak_rss_bytes'] / MIB:.1f} MiB ({growth / MIB:+.1f} over "
        f"the check before its scan); {big['inconclusive_probes']} probes inconclusive "
        f"(pending), {big['failed_probes']} failed; event loop late by "
        f"{ms(big['max_loop_lag_seconds'])} at most",
        baseline=f"grep -c -E: {big['grep_mb_per_second']:.0f} MB/s ({big['grep_seconds']:.1f} s)",
        target="no probe fails while reading (timeout "
        f"{big['timeout_seconds']:g} s): pending until the verdict",
        verdict=_verdict(big["failed_probes"] == 0 and big["ok"]),
        figures={
            "mb_per_second": big["mb_per_second"],
            "seconds": seconds,
            "peak_rss_bytes": big["peak_rss_bytes"],
            "rss_before_bytes": big["rss_before_bytes"],
            "inconclusive_probes": big["inconclusive_probes"],
            "failed_probes": big["failed_probes"],
            "max_loop_lag_seconds": big["max_loop_lag_seconds"],
            "grep_mb_per_second": big["grep_mb_per_second"],
        },
    )


def scale_rows(scale: JSON) -> list[JSON]:
    rows = []
    for size, data in scale["sizes"].items():
        latency = data["status_write_latency"]
        rows.append(
            _row(
                f"scale.n{size}",
                f"scale: {size} agents flipping {scale['flips_per_agent']}x in "
                f"{data['window_seconds']:.0f} s",
                f"agents {data['agent_request_rate']:.1f} req/s (API server total "
                f"{data['apiserver_request_rate']:.0f} req/s, CPU "
                f"{data['apiserver_cpu_millicores']:.0f} mc); status PATCH p50/p99 "
                f"{ms(latency['p50'])} / {ms(latency['p99'])} (server side; as the agents saw "
                f"them: mean {ms(data['status_write_client_mean'])}); "
                f"{data['requests_per_transition']:.2f} requests "
                f"({data['status_writes_per_transition']:.2f} status writes) per transition; "
                f"{data['transitions']} transitions from {data['flips']} flips, "
                f"{data['errors']} errors{_codes(data['error_codes'])}, "
                f"{data['status_writes_without_transition']} status writes without a transition; "
                f"the agents' shared event loop lag p99 {ms(data['event_loop_lag']['p99'])}; "
                f"load {data['load_average_1min_at_end']:.1f}",
                figures={
                    "agent_request_rate": data["agent_request_rate"],
                    "apiserver_request_rate": data["apiserver_request_rate"],
                    "status_write_p50": _num(latency["p50"]),
                    "status_write_p99": _num(latency["p99"]),
                    "event_loop_lag_p99": _num(data["event_loop_lag"]["p99"]),
                    "requests_per_transition": data["requests_per_transition"],
                    "status_writes_per_transition": data["status_writes_per_transition"],
                    "transitions": data["transitions"],
                    "errors": data["errors"],
                    "apiserver_cpu_millicores": data["apiserver_cpu_millicores"],
                    "agent_cpu_millicores_in_process": data[
                        "agents_process_cpu_millicores_per_agent"
                    ],
                },
            )
        )
    for size, data in scale["sizes"].items():
        rows.append(_rest_row(size, data))
    costs = {size: d["requests_per_transition"] for size, d in scale["sizes"].items()}
    spread = scale["cost_spread"]
    rows.append(
        _row(
            "scale.flat",
            "scale: per-agent API cost as N grows",
            "requests per transition: "
            + ", ".join(f"N={size}: {cost:.2f}" for size, cost in costs.items())
            + f" (max/min {spread:.2f})",
            target=f"flat: max/min ≤ {FLAT_SPREAD:.2f}",
            verdict=_verdict(spread <= FLAT_SPREAD),
            figures={"spread": spread},
        )
    )
    return rows


def _rest_row(size: str, data: JSON) -> JSON:
    rest, without = data["at_rest"], data["at_rest_without_agents"]
    per_hour = rest["requests_per_agent_per_hour"]
    return _row(
        f"scale.rest.n{size}",
        f"scale: {size} agents at rest, each watching its own Pod ({rest['seconds']:.0f} s)",
        f"API server CPU {rest['apiserver_cpu_millicores']:.0f} mc, RSS "
        f"{rest['apiserver_rss_bytes'] / MIB:.0f} MiB, {rest['watching']} watches open; "
        f"{rest['agent_requests']} agent requests "
        f"({'n/a' if per_hour is None else f'{per_hour:.1f}'} per agent per hour); API server "
        f"CPU per transition during the flips "
        f"{data['apiserver_cpu_millicores_per_transition']:.1f} mc·s",
        baseline=f"the same {size} Pods without agents ({without['seconds']:.0f} s): CPU "
        f"{without['apiserver_cpu_millicores']:.0f} mc, RSS "
        f"{without['apiserver_rss_bytes'] / MIB:.0f} MiB",
        figures={
            "cpu_with": rest["apiserver_cpu_millicores"],
            "cpu_without": without["apiserver_cpu_millicores"],
            "rss_with": rest["apiserver_rss_bytes"],
            "rss_without": without["apiserver_rss_bytes"],
            "requests_per_agent_per_hour": _num(per_hour),
            "cpu_per_transition": data["apiserver_cpu_millicores_per_transition"],
        },
    )


def repair_rows(repair: JSON) -> list[JSON]:
    agent, shell = repair["agent"]["latency"], repair["shell_loop"]["latency"]
    return [
        _row(
            "repair.latency",
            "repair: another writer turns the gate False -> the agent's True (watch), p50 / p95 "
            f"/ p99, n={agent['n']}",
            f"{triple(agent)}; {repair['agent']['reads']} read(s) and "
            f"{repair['agent']['watches']} watch(es) in all ({repair['agent']['repairs']} "
            "repairs)",
            baseline=f"shell loop rewriting every second: p50 {ms(shell['p50'])} "
            f"({_ratio(shell['p50'], agent['p50'])})",
            target=f"p50 ≤ {ms(REPAIR_P50)}, p99 ≤ {ms(REPAIR_P99)}",
            verdict=_verdict(
                _num(agent["p50"]) <= REPAIR_P50 and _num(agent["p99"]) <= REPAIR_P99
                and repair["agent"]["failures"] == 0
            ),
            figures={"p50": _num(agent["p50"]), "p99": _num(agent["p99"]),
                     "shell_p50": _num(shell["p50"])},
        )
    ]  # fmt: skip


def restart_rows(restart: JSON) -> list[JSON]:
    latency = restart["kubelet_update_to_gate_false"]
    window = restart["ready_with_new_instance"]
    return [
        _row(
            "restart.gate_false",
            "real node: app container killed and restarted -> gate False, from the kubelet's "
            f"status update, p50 / p95 / p99, n={latency['n']}",
            f"{triple(latency)} (kill -> the kubelet's update p50 "
            f"{ms(restart['kill_to_kubelet_update']['p50'])})",
            target=f"p99 ≤ {ms(RESTART_P99)}",
            verdict=_verdict(
                _num(latency["p99"]) <= RESTART_P99 and restart["measured"] == restart["trials"]
            ),
            figures={"p50": _num(latency["p50"]), "p99": _num(latency["p99"])},
        ),
        _row(
            "restart.ready_window",
            "real node: Ready True with the restarted instance before the gate False",
            f"in {window['trials']} of {restart['measured']} restarts ({window['updates']} "
            f"status updates), at most {ms(window['longest_seconds'])}",
            figures=dict(window),
        ),
    ]


def _codes(codes: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{n}x {code}' for code, n in codes.items())})" if codes else ""


def stdout_row(stdout: JSON) -> JSON:
    out, file = stdout["stdout_line_to_true"], stdout["file_line_to_true"]
    return _row(
        "stdout.latency",
        "real node: a line on the container's stdout -> its gate True (log check through the API)",
        f"p50 {ms(out['p50'])}, p99 {ms(out['p99'])} ({stdout['measured']} of "
        f"{stdout['trials']} trials)",
        baseline=f"the same line in a log file, same Pods, same run: p50 {ms(file['p50'])}, "
        f"p99 {ms(file['p99'])}",
        verdict="info",
        figures={"stdout_p50": out["p50"], "stdout_p99": out["p99"], "file_p50": file["p50"],
                 "file_p99": file["p99"]},
    )  # fmt: skip


def build_rows(results: JSON) -> list[JSON]:
    load = results["load_average"]
    cores = results["machine"]["cores"]
    sections = results["sections"]
    runs = results.get("runs") or []
    earlier = "".join(
        f"; {', '.join(run['sections'])} from the run of {run['started_at']}: "
        f"{run['load_average']['load1_min']:.2f} to {run['load_average']['load1_max']:.2f} "
        f"(mean {run['load_average']['load1_mean']:.2f})"
        for run in runs[:-1]
    )
    latest = f" ({', '.join(runs[-1]['sections'])})" if len(runs) > 1 else ""
    rows = [
        _row(
            "run.load",
            "machine load during the run (shared; other work runs too)",
            f"1-min load average {load['load1_min']:.2f} to {load['load1_max']:.2f} "
            f"(mean {load['load1_mean']:.2f}) on {cores} cores{latest}{earlier}",
            figures={k: load[k] for k in ("load1_min", "load1_mean", "load1_max")},
        )
    ]
    rows += latency_rows(sections["latency"])
    rows += api_rows(sections["idle"])
    rows += footprint_rows(sections["idle"])
    rows += waiting_rows(sections["idle"])
    rows += throughput_rows(sections["log_throughput"])
    rows.append(big_scan_row(sections["log_throughput"]["big_scan"]))
    rows += scale_rows(sections["scale"])
    rows += repair_rows(sections["repair"])
    if "restart" in sections:
        rows += restart_rows(sections["restart"])
    if "stdout" in sections:
        rows.append(stdout_row(sections["stdout"]))
    return rows


def markdown(results: JSON) -> str:
    machine = results["machine"]
    runs = results.get("runs") or []
    when = (
        "; ".join(
            f"{', '.join(run['sections'])}: {run['started_at']}, "
            f"{run['duration_seconds'] / 60:.1f} min"
            + (
                ""
                if run["machine"] == machine
                else f" on {run['machine']['cpu_model']}, Linux {run['machine']['kernel']}"
            )
            for run in runs
        )
        if len(runs) > 1
        else f"{results['started_at']}, {results['duration_seconds'] / 60:.1f} min"
    )
    head = (
        f"Benchmarks ({results['mode']} run, {when}) on {machine['cores']} cores "
        f"({machine['cpu_model']}), {machine['mem_total_bytes'] / 2**30:.0f} GiB, Linux "
        f"{machine['kernel']}, Python {machine['python']}, Kubernetes {machine['kubernetes']}\n\n"
    )
    lines = [
        "| Row | Result | Same-run baseline | Target | Verdict |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        cells = [row["name"], row["result"], row["baseline"], row["target"], row["verdict"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    met = sum(1 for r in results["rows"] if r["verdict"] == "met")
    missed = [r["id"] for r in results["rows"] if r["verdict"] == "missed"]
    tail = f"\n\nTargets met: {met}; missed: {len(missed)}" + (
        f" ({', '.join(missed)})" if missed else ""
    )
    return head + "\n".join(lines) + tail + "\n"
