"""The prober worker on a fake clock: schedule, jitter, timeouts, errors, events, thresholds."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from structlog.testing import capture_logs

from sidecar.model import Timing
from sidecar.results import CheckState
from tests.unit.fakes import HANG, FakeClock, Inconclusive, Slow, Step, settle
from tests.unit.prober_rig import PERIOD, SEED, START, Rig, first_result, jitter

# --- schedule ------------------------------------------------------------------------------------


async def test_no_probe_runs_before_the_initial_delay() -> None:
    rig = Rig(timing=Timing(initial_delay=4.0, period=PERIOD))
    async with rig.running():
        await rig.clock.advance(3.5)

        assert rig.probes == 0
        assert rig.results.checks["APP"].state is CheckState.PENDING
        assert rig.metric("readiness_gate_check_ready") == -1


async def test_first_probe_runs_right_after_the_initial_delay() -> None:
    rig = Rig(timing=Timing(initial_delay=4.0, period=PERIOD))
    async with rig.running():
        await rig.clock.advance(4.0)

        assert rig.check.probed_at == [START + 4.0]
        assert rig.state() is CheckState.READY


async def test_first_probe_runs_at_once_without_an_initial_delay() -> None:
    rig = Rig()
    async with rig.running():
        assert rig.check.probed_at == [START]


async def test_second_probe_comes_after_a_random_fraction_of_the_period() -> None:
    rig = Rig(timing=Timing(initial_delay=4.0, period=PERIOD))
    first = START + 4.0
    assert 0.25 < jitter() < PERIOD - 0.5  # the seed gives a real fraction, not 0 or a period
    async with rig.running():
        await rig.clock.advance(4.0 + jitter() - 0.25)
        assert rig.probes == 1

        await rig.clock.advance(0.5)

        assert rig.check.probed_at == [first, pytest.approx(first + jitter())]


async def test_after_the_second_probe_one_probe_runs_per_period() -> None:
    rig = Rig()
    async with rig.running():
        await rig.clock.advance(jitter())
        assert rig.probes == 2

        for n in range(1, 4):
            await rig.clock.advance(PERIOD - 0.25)
            assert rig.probes == n + 1
            await rig.clock.advance(0.25)
            assert rig.probes == n + 2

        gaps = [b - a for a, b in itertools.pairwise(rig.check.probed_at[1:])]
        assert gaps == pytest.approx([PERIOD] * 3)


async def probe_times(seed: int) -> list[float]:
    rig = Rig(seed=seed)
    async with rig.running():
        for _ in range(4):
            await rig.clock.advance(PERIOD)
    return [t - START for t in rig.check.probed_at]


async def test_the_jitter_is_deterministic_for_a_seed() -> None:
    first = await probe_times(SEED)

    assert await probe_times(SEED) == first
    assert first[1] == pytest.approx(jitter(SEED))
    assert (await probe_times(SEED + 1))[1] == pytest.approx(jitter(SEED + 1))
    assert jitter(SEED + 1) != pytest.approx(jitter(SEED))


async def test_a_slow_probe_does_not_cause_catch_up_probes() -> None:
    fine = (True, "fine")
    rig = Rig([fine, Slow(5.0, fine), fine], timing=Timing(period=1.0, timeout=10.0))
    second = START + jitter(period=1.0)
    async with rig.running():
        await rig.clock.advance(jitter(period=1.0) + 7.0)

    # the probe after the slow one runs when it ends, then the period resumes: no burst
    assert rig.check.probed_at == pytest.approx(
        [START, second, second + 5.0, second + 6.0, second + 7.0]
    )


# --- timeouts and errors -------------------------------------------------------------------------


async def test_a_probe_that_exceeds_its_timeout_fails_and_is_cancelled() -> None:
    rig = Rig([HANG], timing=Timing(period=PERIOD, timeout=1.0))

    result = await rig.worker.probe_once()

    assert (result.ok, result.detail) == (False, "timed out after 1s")
    assert rig.check.cancelled == 1
    assert rig.metric("readiness_gate_check_results_total", result="failure") == 1


async def test_the_worker_goes_on_probing_after_a_timeout() -> None:
    rig = Rig([HANG, (True, "fine")], timing=Timing(period=PERIOD, timeout=0.05))
    async with rig.running() as task:
        await first_result(rig)
        assert rig.detail == "timed out after 0.05s"
        assert rig.check.cancelled == 1

        await rig.clock.advance(jitter())

        assert rig.probes == 2
        assert rig.detail == "fine"
        assert not task.done()


async def test_an_exception_in_a_check_becomes_a_failed_result_and_the_worker_goes_on() -> None:
    timing = Timing(period=PERIOD, failure_threshold=1)
    rig = Rig([RuntimeError("boom"), (True, "fine")], timing=timing)
    with capture_logs() as logs:
        async with rig.running() as task:
            last = rig.results.checks["APP"].last
            assert last is not None
            assert (last.ok, last.detail) == (False, "check error: RuntimeError: boom")
            assert rig.state() is CheckState.NOT_READY

            await rig.clock.advance(jitter())

            assert rig.probes == 2
            assert (rig.state(), rig.detail) == (CheckState.READY, "fine")
            assert not task.done()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["check_error"]


async def test_the_detail_of_a_check_error_is_bounded() -> None:
    rig = Rig([ValueError("x" * 1000)])

    result = await rig.worker.probe_once()

    assert not result.ok
    assert len(result.detail) == 200
    assert result.detail.startswith("check error: ValueError: xxx")


# --- events --------------------------------------------------------------------------------------


async def test_a_wakeup_probes_at_once() -> None:
    rig = Rig(events=True)
    async with rig.running():
        assert rig.probes == 1

        rig.check.trigger()
        await settle()

        assert rig.check.probed_at == [START, START]


async def test_wakeups_are_ignored_when_not_event_driven() -> None:
    rig = Rig(events=True, event_driven=False)
    async with rig.running():
        rig.check.trigger()
        await settle()
        assert rig.probes == 1

        await rig.clock.advance(jitter())

        assert rig.probes == 2


async def test_a_wakeup_does_not_shift_the_periodic_schedule() -> None:
    rig = Rig(events=True)
    async with rig.running():
        await rig.clock.advance(1.0)
        rig.check.trigger()
        await settle()
        assert rig.probes == 2

        await rig.clock.advance(jitter() - 1.0)

        assert rig.check.probed_at == [START, START + 1.0, pytest.approx(START + jitter())]


async def test_a_wakeup_during_the_initial_delay_is_covered_by_the_first_probe() -> None:
    rig = Rig(timing=Timing(initial_delay=4.0, period=PERIOD), events=True)
    async with rig.running():
        rig.check.trigger()
        await settle()
        assert rig.probes == 0

        await rig.clock.advance(4.0)

        assert rig.check.probed_at == [START + 4.0]


async def test_a_busy_log_cannot_satisfy_the_success_threshold_at_once() -> None:
    rig = Rig([(True, "matched")], timing=Timing(period=PERIOD, success_threshold=3), events=True)
    async with rig.running():
        for _ in range(10):  # the same evidence, over and over
            rig.check.trigger()
            await settle()
        assert rig.probes == 11
        assert rig.state() is CheckState.PENDING

        await rig.clock.advance(jitter())
        assert rig.state() is CheckState.PENDING
        await rig.clock.advance(PERIOD)

        assert rig.probes == 13
        assert rig.state() is CheckState.READY


async def test_repeated_event_failures_with_the_same_evidence_do_not_count() -> None:
    rig = Rig([(False, "no match")], timing=Timing(period=PERIOD, failure_threshold=2), events=True)
    async with rig.running():
        for _ in range(5):
            rig.check.trigger()
            await settle()
        assert rig.state() is CheckState.PENDING

        await rig.clock.advance(jitter())

        assert rig.state() is CheckState.NOT_READY


async def test_an_event_probe_with_new_evidence_counts_at_once() -> None:
    rig = Rig([(False, "no match"), (True, "matched")], events=True)
    async with rig.running():
        assert rig.state() is CheckState.PENDING  # one failure of three

        rig.check.trigger()
        await settle()

        assert rig.check.probed_at == [START, START]
        assert (rig.state(), rig.detail) == (CheckState.READY, "matched")


async def test_periodic_probes_with_the_same_evidence_always_count() -> None:
    rig = Rig([(True, "matched")], timing=Timing(period=PERIOD, success_threshold=3))
    async with rig.running():
        await rig.clock.advance(jitter())
        assert rig.state() is CheckState.PENDING

        await rig.clock.advance(PERIOD)

        assert rig.probes == 3
        assert rig.state() is CheckState.READY


async def test_a_failing_wakeups_iterator_leaves_the_worker_probing_on_its_period() -> None:
    with capture_logs() as logs:
        rig = Rig(events=True)
        async with rig.running() as task:
            rig.check.fail_wakeups(OSError("inotify is gone"))
            await settle()
            assert not task.done()

            await rig.clock.advance(jitter())
            for _ in range(3):
                await rig.clock.advance(PERIOD)

            assert rig.probes == 5
            assert not task.done()
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["wakeups_failed"]


async def test_wakeups_that_end_leave_the_worker_probing_on_its_period() -> None:
    rig = Rig(events=True)
    async with rig.running() as task:
        rig.check.end_wakeups()
        await settle()

        await rig.clock.advance(jitter())
        await rig.clock.advance(PERIOD)

        assert rig.probes == 3
        assert not task.done()


# --- thresholds and state ------------------------------------------------------------------------


async def test_thresholds_drive_the_state_transitions() -> None:
    script: list[Step] = [
        (True, "up"),
        (True, "up"),
        (False, "down"),
        (False, "down"),
        (True, "up"),
    ]
    timing = Timing(period=PERIOD, success_threshold=2, failure_threshold=2)
    rig = Rig(script, timing=timing)
    seen: list[tuple[CheckState, float | None]] = []
    async with rig.running():
        seen.append((rig.state(), rig.metric("readiness_gate_check_ready")))
        await rig.clock.advance(jitter())
        for _ in range(4):
            seen.append((rig.state(), rig.metric("readiness_gate_check_ready")))
            await rig.clock.advance(PERIOD)
        seen.append((rig.state(), rig.metric("readiness_gate_check_ready")))

    assert seen == [
        (CheckState.PENDING, -1),
        (CheckState.READY, 1),
        (CheckState.READY, 1),  # one failure of two
        (CheckState.NOT_READY, 0),
        (CheckState.NOT_READY, 0),  # one success of two
        (CheckState.READY, 1),
    ]
    assert rig.metric("readiness_gate_check_results_total", result="success") == 4
    assert rig.metric("readiness_gate_check_results_total", result="failure") == 2


async def test_a_state_change_is_recorded_with_the_time_of_the_result() -> None:
    rig = Rig([(False, "down"), (True, "up")], timing=Timing(period=PERIOD, failure_threshold=1))
    async with rig.running():
        await rig.clock.advance(jitter())

    status = rig.results.checks["APP"]
    assert status.state is CheckState.READY
    assert status.changed_at == pytest.approx(rig.clock.time())


# --- inconclusive results (a check still reading) ---------------------------------------------


async def test_inconclusive_results_keep_a_pending_check_pending_until_it_decides() -> None:
    script: list[Step] = [Inconclusive("reading 1 of 9 MiB"), Inconclusive("reading 5 of 9 MiB")]
    timing = Timing(period=PERIOD, failure_threshold=1)
    rig = Rig([*script, (True, "up")], timing=timing)
    async with rig.running():
        assert (rig.state(), rig.detail) == (CheckState.PENDING, "reading 1 of 9 MiB")
        await rig.clock.advance(jitter())
        assert (rig.state(), rig.detail) == (CheckState.PENDING, "reading 5 of 9 MiB")
        await rig.clock.advance(PERIOD)
        assert rig.state() is CheckState.READY
    assert rig.metric("readiness_gate_check_results_total", result="inconclusive") == 2
    assert rig.metric("readiness_gate_check_results_total", result="failure") is None
    assert rig.metric("readiness_gate_check_ready") == 1


async def test_inconclusive_results_never_fail_a_ready_check_even_with_threshold_one() -> None:
    timing = Timing(period=PERIOD, failure_threshold=1)
    script: list[Step] = [(True, "up"), *[Inconclusive("reading")] * 3, (False, "down")]
    rig = Rig(script, timing=timing)
    async with rig.running():
        await rig.clock.advance(jitter())
        for _ in range(2):
            assert rig.state() is CheckState.READY
            status = rig.results.checks["APP"]
            assert status.last is not None
            assert status.last.inconclusive
            assert status.evidence is not None
            assert status.evidence.detail == "up"  # what the gate's message shows
            await rig.clock.advance(PERIOD)
        await rig.clock.advance(PERIOD)
        assert rig.state() is CheckState.NOT_READY  # the first conclusive failure decides


async def test_an_inconclusive_result_neither_counts_nor_breaks_a_run_of_failures() -> None:
    timing = Timing(period=PERIOD, failure_threshold=2)
    rig = Rig([(False, "down"), Inconclusive("reading"), (False, "down")], timing=timing)
    async with rig.running():
        await rig.clock.advance(jitter())
        assert rig.state() is CheckState.PENDING  # one failure of two, then nothing
        await rig.clock.advance(PERIOD)
        assert rig.state() is CheckState.NOT_READY


async def test_an_inconclusive_event_probe_changes_nothing_either() -> None:
    rig = Rig([(True, "up"), Inconclusive("reading")], events=True)
    async with rig.running():
        rig.check.trigger()
        await settle()
        assert rig.probes == 2
        assert rig.state() is CheckState.READY


# --- fast probes while not ready ----------------------------------------------------------------

FAST = 0.25
DOWN = (False, "connection refused")
UP = (True, "connected")


def fast(**timing: float) -> Timing:
    return Timing(period=PERIOD, fast_period=FAST, **timing)  # type: ignore[arg-type]


def offsets(rig: Rig) -> list[float]:
    return [round(at - START, 6) for at in rig.check.probed_at]


async def test_a_check_without_a_success_probes_every_fast_period_between_its_periodic_ones() -> (
    None
):
    rig = Rig([DOWN], timing=fast())
    async with rig.running():
        await rig.clock.advance(1.0)

        assert offsets(rig) == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert rig.state() is CheckState.PENDING


def fast_slot(after: float) -> float:
    """The first fast probe at or after ``after`` (seconds after the first probe)."""
    return math.ceil(after / FAST) * FAST


async def test_while_probing_fast_the_periodic_probe_waits_for_the_fast_period_too() -> None:
    rig = Rig([DOWN], timing=fast(failure_threshold=2))
    assert fast_slot(jitter()) > jitter() + 0.01  # the periodic probe falls due between slots
    async with rig.running():
        await rig.clock.advance(fast_slot(jitter()) - 0.01)
        assert rig.state() is CheckState.PENDING  # due at jitter(), it waits for the next slot

        await rig.clock.advance(0.01)
        assert rig.state() is CheckState.NOT_READY  # and counts its failure there
        await rig.clock.advance(1.0)

    # never two probes less than a fast period apart: at most one per fast period
    assert offsets(rig) == [n * FAST for n in range(rig.probes)]


async def test_a_fast_probe_starts_one_fast_period_after_the_previous_probe_ended() -> None:
    rig = Rig([DOWN, Slow(1.0, DOWN), DOWN], timing=fast(timeout=2.0))
    async with rig.running():
        await rig.clock.advance(2.0)

    # the slow probe (0.25 -> 1.25) delays the next one; probes never overlap or pile up
    assert offsets(rig)[:4] == [0.0, 0.25, 1.5, 1.75]


async def test_a_success_found_fast_makes_the_check_ready_at_once() -> None:
    rig = Rig([DOWN, DOWN, UP], timing=fast())
    async with rig.running():
        await rig.clock.advance(0.5)

        assert offsets(rig) == [0.0, 0.25, 0.5]
        assert (rig.state(), rig.detail) == (CheckState.READY, "connected")
        assert rig.results.checks["APP"].changed_at == pytest.approx(rig.clock.time())


async def test_once_ready_the_check_probes_on_its_period_counted_from_the_fast_success() -> None:
    rig = Rig([DOWN, DOWN, UP], timing=fast())
    async with rig.running():
        await rig.clock.advance(0.5 + PERIOD - 0.25)
        assert rig.probes == 3  # neither fast probes nor the jittered periodic one

        await rig.clock.advance(0.25)
        assert offsets(rig) == [0.0, 0.25, 0.5, 0.5 + PERIOD]

        await rig.clock.advance(PERIOD)
        assert offsets(rig)[-1] == 0.5 + 2 * PERIOD


async def test_successes_after_the_first_are_counted_a_full_period_apart() -> None:
    rig = Rig([DOWN, DOWN, UP], timing=fast(success_threshold=3))
    async with rig.running():
        await rig.clock.advance(0.5)
        assert rig.state() is CheckState.PENDING  # one success of three, found fast

        await rig.clock.advance(PERIOD)
        assert rig.state() is CheckState.PENDING  # two of three, a period later
        assert offsets(rig) == [0.0, 0.25, 0.5, 0.5 + PERIOD]

        await rig.clock.advance(PERIOD)
        assert offsets(rig) == [0.0, 0.25, 0.5, 0.5 + PERIOD, 0.5 + 2 * PERIOD]
        assert rig.state() is CheckState.READY


async def test_a_failure_while_counting_successes_resumes_the_fast_probes() -> None:
    script: list[Step] = [DOWN, UP, DOWN, DOWN, UP, UP]
    rig = Rig(script, timing=fast(success_threshold=2))
    async with rig.running():
        await rig.clock.advance(0.25 + PERIOD + 0.5)
        assert rig.state() is CheckState.PENDING

        await rig.clock.advance(PERIOD)

        # fail, fast success (1 of 2), periodic failure (0 of 2), fast failure (not counted),
        # fast success (1 of 2), periodic success (2 of 2)
        end = 0.25 + PERIOD
        assert offsets(rig) == [0.0, 0.25, end, end + 0.25, end + 0.5, end + 0.5 + PERIOD]
        assert rig.state() is CheckState.READY


async def test_failures_found_fast_count_neither_toward_the_threshold_nor_in_the_results() -> None:
    other = (False, "connection reset")
    rig = Rig([DOWN, other], timing=fast(failure_threshold=2))
    async with rig.running():
        seen = rig.results.version
        await rig.clock.advance(fast_slot(jitter()) - 0.1)

        assert rig.probes > 10
        assert rig.state() is CheckState.PENDING  # one counted failure: the first probe's
        assert rig.detail == "connection refused"  # the fast failures are not shown ...
        assert rig.results.version == seen  # ... nor do they wake the gate writer

        await rig.clock.advance(0.1)

        # the periodic probe counts the second failure, when it would without fast probes (but
        # for the wait for the fast period to pass)
        assert (rig.state(), rig.detail) == (CheckState.NOT_READY, "connection reset")
        assert rig.results.checks["APP"].changed_at == pytest.approx(rig.clock.time())
    assert rig.metric("readiness_gate_check_results_total", result="failure") == rig.probes


async def test_a_ready_check_fails_on_its_period_only_and_recovers_fast() -> None:
    rig = Rig([UP, DOWN], timing=fast(failure_threshold=3))
    async with rig.running():
        await rig.clock.advance(jitter())
        assert (rig.probes, rig.state()) == (2, CheckState.READY)  # one failure of three

        await rig.clock.advance(PERIOD - 0.25)
        assert rig.probes == 2  # no fast probes while ready

        await rig.clock.advance(PERIOD + 0.25)
        assert (rig.probes, rig.state()) == (4, CheckState.NOT_READY)
        assert offsets(rig)[1:] == pytest.approx([jitter(), jitter() + PERIOD, jitter() + 16])

        rig.check.script(UP)
        await rig.clock.advance(FAST)
        assert offsets(rig)[-1] == pytest.approx(jitter() + 2 * PERIOD + FAST)
        assert rig.state() is CheckState.READY


async def test_a_fast_period_of_0_keeps_the_kubelet_schedule() -> None:
    rig = Rig([DOWN], timing=Timing(period=PERIOD, fast_period=0.0))
    async with rig.running():
        await rig.clock.advance(jitter() - 0.1)
        assert rig.probes == 1

        await rig.clock.advance(0.1)
        assert rig.probes == 2


# --- overdue -------------------------------------------------------------------------------------


def test_a_worker_in_its_initial_delay_is_not_overdue() -> None:
    rig = Rig(timing=Timing(initial_delay=30.0, period=2.0, timeout=1.0))
    allowance = 2 * (2.0 + 1.0) + 5

    assert not rig.worker.overdue(START + 30.0 + allowance)
    assert rig.worker.overdue(START + 30.0 + allowance + 0.5)


async def test_a_probing_worker_is_never_overdue() -> None:
    rig = Rig(timing=Timing(period=2.0, timeout=1.0))
    async with rig.running():
        for _ in range(50):
            await rig.clock.advance(1.0)
            assert not rig.worker.overdue(rig.clock.monotonic())


async def test_a_worker_that_stopped_probing_becomes_overdue() -> None:
    rig = Rig(timing=Timing(period=2.0, timeout=1.0))
    async with rig.running():
        await rig.clock.advance(3.0)
    last = rig.worker.last_probe_at
    assert last is not None

    assert not rig.worker.overdue(last + 11.0)
    assert rig.worker.overdue(last + 11.5)


# --- the fake clock itself -----------------------------------------------------------------------


async def test_the_fake_clock_wakes_sleepers_in_deadline_order_at_their_deadlines() -> None:
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in [("c", 3.0), ("a", 1.0), ("b", 2.0)]]
    await settle()
    assert clock.sleepers == 3

    await clock.advance(2.5)
    assert woke == [("a", 1.0), ("b", 2.0)]
    assert clock.monotonic() == 2.5

    await clock.advance(0.5)
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    await asyncio.gather(*tasks)


async def test_the_fake_clock_wakes_sleeps_that_begin_during_an_advance() -> None:
    clock = FakeClock(start=0.0)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await clock.sleep(1.0)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(ticker())
    try:
        await clock.advance(3.5)
        assert ticks == [1.0, 2.0, 3.0]
        assert clock.time() - clock.monotonic() == 1_700_000_000.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert clock.sleepers == 0  # a cancelled sleep is forgotten
