"""The benchmark suite in smoke mode (benchmarks/), in-process, against the session's control plane.

It checks that the suite runs end to end and that its output is complete: every row of the table
is present, with a result, a verdict and finite figures, and the JSON holds no NaN or infinity.
It does NOT check the targets: a smoke run's trial counts are far too small for that, and the
machine is shared; `python -m benchmarks` (the full run) reports met or missed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.common import finite_numbers
from benchmarks.report import expected_row_ids, markdown
from benchmarks.suite import all_sections, run_suite
from tests.harness.cluster import ControlPlane

VERDICTS = {"met", "missed", "baseline", "info"}


async def test_smoke_run_reports_every_row_with_finite_figures(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    results = await run_suite(control_plane, smoke=True, workdir=tmp_path)

    assert results["mode"] == "smoke"
    assert set(results["sections"]) == set(all_sections(smoke=True))
    json.dumps(results, allow_nan=False)  # no NaN or infinity anywhere in the JSON
    rows = results["rows"]
    assert [row["id"] for row in rows] == expected_row_ids(smoke=True)
    for row in rows:
        assert row["verdict"] in VERDICTS, row
        assert row["name"], row
        assert row["result"], row
        assert row["figures"], row
        for key, value in row["figures"].items():
            assert value is not None, f"{row['id']}: {key} is missing"
        for path, number in finite_numbers(row["figures"]):
            assert math.isfinite(number), f"{row['id']}: {path} = {number}"
    for kind in ("log", "file", "tcp", "http"):
        for config in ("agent", "periodic-1s", "periodic-10s", "shell-loop"):
            figures = next(r for r in rows if r["id"] == f"latency.{kind}.{config}")["figures"]
            assert figures["trials"] >= 1
            assert 0 < figures["condition_p50"] <= figures["ready_p50"]
    assert results["load_average"]["samples"] >= 1

    table = markdown(results)
    assert table.count("\n| ") == len(rows) + 1  # the header and one line per row
    for row in rows:
        assert row["name"] in table
