"""``readiness-gate-sidecar [run | check | config]``.

Exit codes: 0 success (``check``: every gate would be True), 1 a gate would be False (``check``)
or the agent failed, 2 the configuration is invalid (nothing was started, no API call was made).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.checks import ContainerLogs, build_check
from sidecar.clock import SystemClock
from sidecar.config import ConfigError, Settings, load_settings
from sidecar.model import LogParams
from sidecar.prober import probe
from sidecar.results import CheckState, Results

if TYPE_CHECKING:
    from sidecar.api import PodApi

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_CONFIG = 2


def entry() -> None:
    """The console script and ``python -m sidecar``: :func:`main`, then a fast exit.

    Everything the agent opened is closed by then; what is left is the interpreter's own tear-down
    of its modules and objects (kubernetes_asyncio's among them), which takes 0.2 s on an idle
    machine and seconds on a busy node: after SIGTERM the kubelet is waiting. So the process ends
    with os._exit once stdout and stderr are flushed."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environment = os.environ if env is None else env
    command = args.command or "run"
    try:
        settings = load_settings(environment, require_api=command == "run")
    except ConfigError as err:
        print(f"readiness-gate-sidecar: invalid configuration:\n{err}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "config":
        print(json.dumps(settings.describe(), indent=2, sort_keys=True, default=str))
        return EXIT_OK
    if command == "check":
        return asyncio.run(_check_once(settings))
    return _run(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readiness-gate-sidecar",
        description="Report a legacy application's readiness through a Pod readiness gate. "
        "Configured with environment variables (GATE_*, CHECK_<ID>_*).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("run", help="run the agent (the default)")
    sub.add_parser(
        "check", help="run every check once, print the results; exit 0 if all gates pass"
    )
    sub.add_parser("config", help="print the effective configuration as JSON")
    return parser


def _run(settings: Settings) -> int:
    # Imported here: runtime pulls in kubernetes_asyncio (~1 s), which `check` and `config` skip.
    from sidecar import logs, runtime  # noqa: PLC0415

    logs.configure(settings.log_level)
    asyncio.run(runtime.run(settings))
    return EXIT_OK


async def _check_once(settings: Settings) -> int:
    clock = SystemClock()
    results = Results(settings.checks, settings.mode)
    api, logs = _api_for_output(settings)
    try:
        for spec in settings.checks:
            check = build_check(spec, clock, container_logs=logs, follow=False)
            try:
                result = await probe(check, clock)
                while result.inconclusive:  # still reading a big log: it makes progress, wait
                    result = await probe(check, clock)
            finally:
                await check.aclose()
            print(f"{'PASS' if result.ok else 'FAIL'}  {spec.label}: {result.detail}")
            state = CheckState.READY if result.ok else CheckState.NOT_READY
            results.update(spec.id, result, state)
    finally:
        if api is not None:
            await api.aclose()
    every_gate_passes = True
    for key, gate in results.gates().items():
        every_gate_passes &= gate.ok
        name = key or settings.condition_type or "(the Pod's readiness gate)"
        print(f"gate {name}: {'True' if gate.ok else 'False'} ({gate.reason}: {gate.message})")
    return EXIT_OK if every_gate_passes else EXIT_NOT_READY


def _api_for_output(settings: Settings) -> tuple[PodApi | None, ContainerLogs | None]:
    """The API, only when a log check reads a container's output and the Pod is known (the
    import costs a second: ``check`` of files and ports does without)."""
    reads_output = any(
        isinstance(spec.params, LogParams) and spec.params.follows_output
        for spec in settings.checks
    )
    if not reads_output or settings.identity is None:
        return None, None
    from sidecar.api import KubePodApi  # noqa: PLC0415
    from sidecar.metrics import Metrics  # noqa: PLC0415
    from sidecar.podlogs import PodLogs  # noqa: PLC0415

    api = KubePodApi(settings.api, settings.identity, Metrics())
    return api, PodLogs(api, settings.identity.namespace)
