"""Property: the real ``LogCheck``, following a real file through random interleavings of writes,
rename rotations, truncations, copytruncates and deletions, reports what a simple model says.

The unit property (``tests/unit/checks/test_follow_property.py``) proves which lines the follower
reads and where its read position goes back to the start of a file. This one proves the check
built on it: its state after every probe. The operations, the file model and the rules that keep a
test within what any follower can see (at most one structural change between two reads) are that
test's ``World``; on top of its events, the model of the check is:

- rotation is not an application event: a truncation, a ``copytruncate``, a deleted, replaced or
  missing file changes nothing (the new content is simply read from its start);
- each line, in order: a line with ``START`` (the start pattern) forgets the match; then a line
  with ``FAIL`` is a fail match (it wins when a line has both), else a line with ``READY`` a ready
  match, else nothing changes (the latest match wins);
- the verdict: fail -> "fail pattern seen"; ready -> ready (the only passing verdict); without a
  match: the path missing -> "does not exist yet", else "not seen".

Some probes are cancelled at a random point first (as the prober's timeout does), then probed
again: a cancelled probe must neither lose nor double-count a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.checks import _follow
from sidecar.checks.log import LogCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckSpec, LogParams, Timing
from tests.unit.checks.test_follow_property import RESET, World

PAYLOAD = st.sampled_from(
    [
        "",
        "noise",
        "READY",
        "FAIL",
        "READY and FAIL",
        "FAIL, READY",
        "é READY 🚀",
        "START",
        "START READY",
        "START FAIL",
    ]
)
OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 30), st.booleans(), PAYLOAD),
    st.tuples(st.just("write"), st.integers(1, 30), st.booleans(), PAYLOAD),
    st.tuples(st.just("write"), st.integers(1, 30), st.booleans(), PAYLOAD),
    st.sampled_from(
        [
            ("read",),
            ("read",),
            ("cancelled", 0),
            ("cancelled", 1),
            ("cancelled", 3),
            ("rename",),
            ("rename_without_create",),
            ("delete_rotated",),
            ("copytruncate",),
            ("truncate",),
            ("delete_and_recreate",),
            ("delete",),
        ]
    ),
)


class CheckModel:
    def __init__(self) -> None:
        self.match: str | None = None  # "ready" or "fail"
        self.missing = False

    def fold(self, events: list[str], missing: bool) -> None:
        for event in events:
            if event == RESET:  # rotation: nothing to forget
                continue
            if "START" in event:
                self.match = None
            if "FAIL" in event:
                self.match = "fail"
            elif "READY" in event:
                self.match = "ready"
        self.missing = missing

    @property
    def verdict(self) -> str:
        if self.match is not None:
            return self.match
        return "missing" if self.missing else "none"


def verdict(ok: bool, detail: str) -> str:
    if detail.endswith("does not exist yet"):
        found = "missing"
    elif detail.startswith('fail pattern "FAIL" seen'):
        found = "fail"
    elif detail.startswith('pattern "READY" not seen'):
        found = "none"
    elif detail.startswith('pattern "READY" seen'):
        found = "ready"
    else:
        raise AssertionError(f"unexpected detail: {detail}")
    assert ok == (found == "ready"), (ok, detail)
    return found


def spec(path: Path) -> CheckSpec:
    params = LogParams(
        path=path,
        pattern=re.compile("READY"),
        fail_pattern=re.compile("FAIL"),
        start_pattern=re.compile("START"),
    )
    return CheckSpec(id="APP", kind=CheckKind.LOG, gate=None, timing=Timing(), params=params)


async def follow(world: World, ops: list[tuple[object, ...]]) -> None:
    check = LogCheck(spec(world.path), SystemClock())
    model = CheckModel()
    changed = False  # a structural change since the last read

    async def probe(cancel_after: int | None = None) -> None:
        nonlocal changed
        changed = False
        if cancel_after is not None:  # cut short like a timeout, then probed again
            cut = asyncio.create_task(check.probe())
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            cut.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cut
        result = await check.probe()
        model.fold(*world.model.read())
        assert verdict(result.ok, result.detail) == model.verdict, (result, model.verdict)

    try:
        for op in ops:
            kind = op[0]
            structural = world.structural(op) and kind != "cancelled"
            if structural and changed:
                await probe()
            changed = changed or structural
            if kind == "read":
                await probe()
            elif kind == "cancelled":
                assert isinstance(op[1], int)
                await probe(cancel_after=op[1])
            else:
                world.apply(op)
        world.finish()
        await probe()
    finally:
        await check.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exists=st.booleans(),
    sizes=st.sampled_from([(3, 11), (16, 64), (_follow.CHUNK_SIZE, _follow.BATCH_LIMIT)]),
    ops=st.lists(OPS, max_size=60),
)
def test_log_check_state_follows_the_model_through_rotations_truncations_and_deletions(
    exists: bool, sizes: tuple[int, int], ops: list[tuple[object, ...]]
) -> None:
    chunk, budget = sizes
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(_follow, "CHUNK_SIZE", chunk),
        mock.patch.object(_follow, "BATCH_LIMIT", budget),
    ):
        world = World.create(Path(tmp), exists=exists, max_line=_follow.MAX_LINE)
        asyncio.run(follow(world, ops))
