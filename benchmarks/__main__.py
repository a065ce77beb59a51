"""``python -m benchmarks [--smoke]``: the benchmark suite (see benchmarks/README.md).

Starts its own control plane (tests/harness, with the hollow kubelet's API client limits raised to a
real kubelet's defaults; as root, in a private network namespace), installs the shipped admission
policy, runs every section against it, prints a markdown table and writes
the same figures as JSON: ``benchmarks/results.json`` for the full run,
``benchmarks/results-smoke.json`` for ``--smoke`` (tiny trial counts, under two minutes, for CI).
``--only SECTION --merge`` re-runs some sections and replaces only their figures in that JSON (the
table then says which run each section comes from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cluster import BenchControlPlane
from benchmarks.common import jsonable
from benchmarks.report import markdown
from benchmarks.suite import SECTIONS, merge_results, run_suite
from tests.harness.workloads import install_admission_policy

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny trial counts (CI, < 2 min)")
    parser.add_argument("--output", type=Path, help="where to write the JSON")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; for development: no table, partial JSON)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those sections in the existing JSON and rebuild its table",
    )
    args = parser.parse_args(argv)
    if args.merge and not args.only:
        parser.error("--merge needs --only")
    output = args.output or HERE / ("results-smoke.json" if args.smoke else "results.json")
    sections = tuple(args.only) if args.only else SECTIONS
    with BenchControlPlane.started(log=sys.stderr) as plane:
        install_admission_policy(plane)
        workdir = plane.workdir / "bench"
        results = asyncio.run(
            run_suite(plane, smoke=args.smoke, workdir=workdir, sections=sections)
        )
    if args.merge:
        results = merge_results(json.loads(output.read_text()), results)
    output.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n")
    if "rows" in results:
        print(markdown(results))
    print(f"results written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
