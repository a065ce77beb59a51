"""Thresholds (kubelet semantics), aggregation per gate, and the results manager."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.model import CheckResult, GateMode
from sidecar.results import (
    MESSAGE_LIMIT,
    CheckState,
    CheckStatus,
    GateReason,
    Results,
    Threshold,
    aggregate,
)
from tests.unit.fakes import make_spec, settle

PENDING, READY, NOT_READY = CheckState.PENDING, CheckState.READY, CheckState.NOT_READY


def replay(threshold: Threshold, outcomes: str) -> list[CheckState]:
    """Feed ``outcomes`` (``+`` success, ``-`` failure); the state after each."""
    return [threshold.record(c == "+") for c in outcomes]


def result(ok: bool = True, detail: str = "fine", at: float = 1.0) -> CheckResult:
    return CheckResult(ok=ok, detail=detail, at=at)


def status(check_id: str, state: CheckState, detail: str | None = None) -> CheckStatus:
    last = None if detail is None else result(state is READY, detail)
    return CheckStatus(spec=make_spec(check_id), state=state, last=last, changed_at=None)


# --- Threshold ---------------------------------------------------------------------------------


def test_threshold_starts_pending() -> None:
    assert Threshold(1, 1).state is PENDING


def test_gate_stays_pending_until_success_threshold() -> None:
    assert replay(Threshold(3, 3), "+++") == [PENDING, PENDING, READY]


def test_check_is_not_ready_after_failure_threshold_consecutive_failures() -> None:
    assert replay(Threshold(1, 3), "---") == [PENDING, PENDING, NOT_READY]


def test_thresholds_of_one_follow_every_result() -> None:
    assert replay(Threshold(1, 1), "+-+") == [READY, NOT_READY, READY]


def test_an_interleaved_result_resets_the_run() -> None:
    threshold = Threshold(2, 2)

    assert replay(threshold, "+-+-+-") == [PENDING] * 6
    assert replay(threshold, "-") == [NOT_READY]


def test_a_ready_check_stays_ready_through_fewer_failures_than_the_threshold() -> None:
    threshold = Threshold(1, 3)
    threshold.record(True)

    assert replay(threshold, "--+--") == [READY] * 5
    assert replay(threshold, "-") == [NOT_READY]


def test_a_not_ready_check_needs_success_threshold_successes_to_recover() -> None:
    threshold = Threshold(3, 1)
    threshold.record(False)

    assert replay(threshold, "++-++") == [NOT_READY] * 5
    assert replay(threshold, "+") == [READY]


# --- aggregate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "states", "ok", "pending", "reason"),
    [
        (GateMode.ALL, [READY, READY], True, False, GateReason.PASSED),
        (GateMode.ALL, [READY, PENDING], False, True, GateReason.PENDING),
        (GateMode.ALL, [READY, NOT_READY], False, False, GateReason.FAILED),
        (GateMode.ALL, [PENDING, NOT_READY], False, False, GateReason.FAILED),
        (GateMode.ALL, [PENDING, PENDING], False, True, GateReason.PENDING),
        (GateMode.ALL, [NOT_READY, NOT_READY], False, False, GateReason.FAILED),
        (GateMode.ANY, [READY, READY], True, False, GateReason.PASSED),
        (GateMode.ANY, [READY, NOT_READY], True, False, GateReason.PASSED),
        (GateMode.ANY, [READY, PENDING], True, False, GateReason.PASSED),
        (GateMode.ANY, [PENDING, NOT_READY], False, True, GateReason.PENDING),
        (GateMode.ANY, [PENDING, PENDING], False, True, GateReason.PENDING),
        (GateMode.ANY, [NOT_READY, NOT_READY], False, False, GateReason.FAILED),
    ],
)
def test_aggregate_combines_check_states_per_mode(
    mode: GateMode, states: list[CheckState], ok: bool, pending: bool, reason: GateReason
) -> None:
    checks = [status(f"C{i}", s, f"detail {i}") for i, s in enumerate(states)]

    gate = aggregate("example.com/ready", mode, checks)

    assert (gate.key, gate.ok, gate.pending, gate.reason) == (
        "example.com/ready",
        ok,
        pending,
        reason,
    )


def test_a_gate_that_passes_every_check_shows_every_check() -> None:
    checks = [status("A", READY, "a is up"), status("B", READY, "b is up")]

    gate = aggregate(None, GateMode.ALL, checks)

    assert gate.message == "file A: a is up; file B: b is up"


def test_a_gate_that_passes_any_check_shows_only_the_ready_ones() -> None:
    checks = [status("A", NOT_READY, "a is down"), status("B", READY, "b is up")]

    assert aggregate(None, GateMode.ANY, checks).message == "file B: b is up"


def test_a_failed_gate_shows_only_the_failed_checks() -> None:
    checks = [
        status("A", READY, "a is up"),
        status("B", NOT_READY, "b is down"),
        status("C", PENDING),
    ]

    assert aggregate(None, GateMode.ALL, checks).message == "file B: b is down"


def test_a_pending_gate_names_the_undecided_checks() -> None:
    checks = [status("A", READY, "a is up"), status("B", PENDING), status("C", PENDING, "c?")]

    gate = aggregate(None, GateMode.ALL, checks)

    assert gate.message == "waiting for the checks to decide: file B, file C"


def test_a_check_without_a_result_says_so() -> None:
    assert status("A", NOT_READY).summary == "file A: no result yet"


def test_gate_messages_are_bounded() -> None:
    checks = [status(f"C{i}", NOT_READY, "x" * 150) for i in range(20)]

    message = aggregate(None, GateMode.ALL, checks).message

    assert len(message) == MESSAGE_LIMIT
    assert message.startswith("file C0: xxx")
    assert message.endswith("…")


# --- Results -----------------------------------------------------------------------------------


def two_gates() -> Results:
    specs = [make_spec("A", gate="x/a"), make_spec("B", gate="x/b"), make_spec("C", gate="x/a")]
    return Results(specs, GateMode.ALL)


def test_results_start_pending_without_results() -> None:
    results = two_gates()

    assert results.version == 0
    assert not results.has_results()
    assert all(c.state is PENDING and c.last is None for c in results.checks.values())
    assert results.gate_keys == ["x/a", "x/b"]
    assert {k: g.pending for k, g in results.gates().items()} == {"x/a": True, "x/b": True}


def test_update_reports_the_first_result_as_a_change() -> None:
    results = two_gates()

    assert results.update("A", result(at=5.0), READY) is True

    assert results.version == 1
    assert results.checks["A"].last == result(at=5.0)
    assert results.checks["A"].changed_at == 5.0


def test_update_with_the_same_state_and_evidence_is_not_a_change() -> None:
    results = two_gates()
    results.update("A", result(at=5.0), READY)

    assert results.update("A", result(at=7.0), READY) is False

    assert results.version == 1
    assert results.checks["A"].last == result(at=7.0)  # the newest result is still kept
    assert results.checks["A"].changed_at == 5.0


def test_update_with_new_evidence_is_a_change_but_keeps_the_transition_time() -> None:
    results = two_gates()
    results.update("A", result(detail="up on 8080", at=5.0), READY)

    assert results.update("A", result(detail="up on 8081", at=7.0), READY) is True

    assert results.version == 2
    assert results.checks["A"].changed_at == 5.0


def test_update_with_a_new_state_is_a_change_and_records_when() -> None:
    results = two_gates()
    results.update("A", result(ok=False, detail="down", at=5.0), PENDING)

    assert results.update("A", result(ok=False, detail="down", at=9.0), NOT_READY) is True

    assert results.version == 2
    assert results.checks["A"].state is NOT_READY
    assert results.checks["A"].changed_at == 9.0


def test_a_failure_below_the_failure_threshold_leaves_the_gate_message_alone() -> None:
    # The check stays READY (kubelet semantics), so the gate must keep saying why it passed: a
    # transient failure must not change the condition's message, which would cost two writes.
    results = two_gates()
    results.update("A", result(detail="a is up", at=1.0), READY)
    results.update("C", result(detail="c is up", at=1.0), READY)
    passed = results.gate("x/a")

    results.update("A", result(ok=False, detail="connection refused", at=2.0), READY)

    assert results.gate("x/a") == passed
    assert results.checks["A"].last == result(ok=False, detail="connection refused", at=2.0)


def test_the_failure_that_makes_a_check_not_ready_is_what_the_gate_shows() -> None:
    results = two_gates()
    results.update("A", result(detail="a is up", at=1.0), READY)
    results.update("A", result(ok=False, detail="connection refused", at=2.0), READY)

    results.update("A", result(ok=False, detail="timed out", at=3.0), NOT_READY)

    assert results.gate("x/a").message == "file A: timed out"


def test_an_inconclusive_result_never_becomes_what_the_gate_shows() -> None:
    # A check still reading a big log keeps its state; its "still reading ... 5 of 900 MiB"
    # changes on every probe and must not rewrite the condition's message each time.
    results = two_gates()
    results.update("A", result(ok=False, detail="pattern not seen", at=1.0), NOT_READY)
    failed = results.gate("x/a")
    reading = CheckResult(ok=False, detail="still reading: 5 of 900 MiB", at=2.0, inconclusive=True)

    results.update("A", reading, NOT_READY)

    assert results.gate("x/a") == failed
    assert results.checks["A"].last == reading
    assert results.checks["A"].evidence == result(ok=False, detail="pattern not seen", at=1.0)


def test_gates_aggregate_only_their_own_checks() -> None:
    results = two_gates()
    results.update("A", result(), READY)
    results.update("B", result(ok=False, detail="down"), NOT_READY)

    gates = results.gates()

    assert (gates["x/a"].pending, gates["x/a"].ok) == (True, False)  # C has no result yet
    assert (gates["x/b"].reason, gates["x/b"].message) == (GateReason.FAILED, "file B: down")
    results.update("C", result(), READY)
    assert results.gate("x/a").ok
    assert results.has_results()


async def test_wait_changed_returns_at_once_when_the_version_already_differs() -> None:
    results = two_gates()
    results.update("A", result(), READY)

    assert await asyncio.wait_for(results.wait_changed(0), timeout=5) == 1


async def test_wait_changed_wakes_only_on_a_visible_change() -> None:
    results = two_gates()
    results.update("A", result(), READY)
    waiter = asyncio.create_task(results.wait_changed(results.version))
    try:
        await settle()
        results.update("A", result(at=2.0), READY)  # same evidence: nothing to show
        await settle()
        assert not waiter.done()

        results.update("A", result(ok=False, detail="down"), READY)

        assert await asyncio.wait_for(waiter, timeout=5) == 2
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


async def test_every_waiter_wakes_on_a_change() -> None:
    results = two_gates()
    waiters = [asyncio.create_task(results.wait_changed(0)) for _ in range(3)]
    await settle()

    results.update("B", result(), READY)

    assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=5) == [1, 1, 1]
