"""The prober and the container lifecycle, on a fake clock (kubelet parity, issue 11).

The followed containers come from a real ``Containers`` fed with Pod statuses, as the Pod
observer feeds it.
"""

from __future__ import annotations

import time
from typing import Any

from sidecar.containers import Containers
from sidecar.model import Timing
from sidecar.results import Cause, CheckState, GateReason
from tests.unit.fakes import settle
from tests.unit.prober_rig import PERIOD, Rig, jitter

JSON = dict[str, Any]


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


class App:
    """The application container's status, as the kubelet reports it in the Pod."""

    def __init__(self, containers: Containers, clock_wall: float) -> None:
        self.containers = containers
        self.wall = clock_wall
        self.restarts = 0

    def report(self, state: JSON, container_id: str | None) -> None:
        status = {"name": "app", "restartCount": self.restarts, "state": state}
        if container_id:
            status["containerID"] = container_id
        self.containers.update(
            {
                "spec": {"containers": [{"name": "app"}, {"name": "readiness-gate"}]},
                "status": {"containerStatuses": [status]},
            }
        )

    def running(self, container_id: str, *, started: float | None = None) -> None:
        self.report({"running": {"startedAt": stamp(started or self.wall)}}, container_id)

    def crashing(self) -> None:
        self.report({"waiting": {"reason": "CrashLoopBackOff"}}, None)


def rig_with_app(timing: Timing | None = None, script: Any = None) -> tuple[Rig, App]:
    containers = Containers("readiness-gate")
    rig = Rig(script, timing=timing, following=containers.follow(None))
    return rig, App(containers, rig.clock.time())


def gate(rig: Rig) -> tuple[bool, bool, GateReason, str]:
    state = rig.results.gate(None)
    return state.ok, state.pending, state.reason, state.message


async def test_a_container_that_is_not_running_fails_the_check_at_once_without_probing() -> None:
    rig, app = rig_with_app(Timing(period=PERIOD, failure_threshold=3))
    app.running("containerd://one")
    async with rig.running():
        assert rig.state() is CheckState.READY
        probes = rig.probes
        app.restarts = 1
        app.crashing()
        await settle()
        assert rig.state() is CheckState.NOT_READY  # no failure threshold
        assert rig.status.cause is Cause.CONTAINER_NOT_RUNNING
        await rig.clock.advance(5 * PERIOD)

    assert rig.probes == probes  # nothing is probed while it does not run
    ok, pending, reason, message = gate(rig)
    assert (ok, pending, reason) == (False, False, GateReason.CONTAINER_NOT_RUNNING)
    assert message == "file APP: container app is not running: CrashLoopBackOff (1 restart)"
    assert not rig.worker.overdue(rig.clock.monotonic())


async def test_a_new_instance_resets_the_check_to_pending_and_known_not_ready() -> None:
    rig, app = rig_with_app(Timing(period=PERIOD, success_threshold=2))
    app.running("containerd://one")
    async with rig.running():
        await rig.clock.advance(jitter())
        assert rig.state() is CheckState.READY
        app.restarts = 1
        app.running("containerd://two")  # restarted: no waiting state seen in between
        await settle()
        after_reset = rig.status
        assert after_reset.state is CheckState.PENDING
        assert after_reset.cause is Cause.CONTAINER_RESTARTED
        assert gate(rig)[:3] == (False, False, GateReason.CONTAINER_RESTARTED)
        assert "container app restarted (restart 1)" in gate(rig)[3]
        first = rig.probes  # probed at once: the thresholds count afresh
        assert rig.state() is CheckState.PENDING  # one success of the two it needs
        await rig.clock.advance(PERIOD)

    assert first == 3
    assert rig.state() is CheckState.READY
    assert rig.status.cause is None
    assert rig.check.forgotten[-1] == int(app.wall)


async def test_evidence_older_than_the_new_instance_is_forgotten_at_its_start() -> None:
    rig, app = rig_with_app()
    app.running("containerd://one", started=app.wall - 100)
    async with rig.running():
        app.restarts = 1
        app.running("containerd://two", started=app.wall + 1)
        await settle()

    assert rig.check.forgotten == [int(app.wall) - 100, int(app.wall) + 1]


async def test_the_initial_delay_counts_from_the_containers_start() -> None:
    rig, app = rig_with_app(Timing(initial_delay=10.0, period=PERIOD))
    app.running("containerd://one", started=app.wall - 6)  # the app runs for 6 s already
    async with rig.running():
        await rig.clock.advance(3.9)
        assert rig.probes == 0
        await rig.clock.advance(0.2)
        assert rig.probes == 1
        app.restarts = 1
        app.running("containerd://two", started=rig.clock.time())
        await rig.clock.advance(9.9)
        assert rig.probes == 1  # the new instance's initial delay
        await rig.clock.advance(0.2)

    assert rig.probes == 2


async def test_the_instance_seen_when_the_agent_starts_is_not_a_restart() -> None:
    rig, app = rig_with_app(Timing(initial_delay=30.0, period=PERIOD))
    app.running("containerd://one", started=app.wall - 1)
    async with rig.running():
        await rig.clock.advance(1.0)

    # Merely pending: an existing True on the server stays until the checks decide.
    assert rig.state() is CheckState.PENDING
    assert rig.status.cause is None
    assert gate(rig)[:2] == (False, True)
    assert rig.check.forgotten == [int(app.wall) - 1]


async def test_a_container_that_starts_after_the_agent_is_waited_for_then_checked() -> None:
    rig, app = rig_with_app()
    app.report({"waiting": {"reason": "ContainerCreating"}}, None)
    async with rig.running():
        await rig.clock.advance(3 * PERIOD)
        assert rig.probes == 0
        assert gate(rig)[2] is GateReason.CONTAINER_NOT_RUNNING
        app.running("containerd://one")
        await settle()

    assert rig.probes == 1
    assert rig.state() is CheckState.READY


async def test_a_first_instance_seen_starting_is_false_checks_pending_until_decided() -> None:
    rig, app = rig_with_app(Timing(initial_delay=5.0, period=PERIOD))
    app.report({"waiting": {"reason": "ContainerCreating"}}, None)
    async with rig.running():
        app.running("containerd://one")
        await settle()
        # Not a restart, but nothing the server says about the container before it ran counts.
        assert rig.status.cause is Cause.CONTAINER_STARTED
        ok, pending, reason, message = gate(rig)
        assert (ok, pending, reason) == (False, False, GateReason.PENDING)
        assert message == "waiting for the checks to decide: file APP"
        await rig.clock.advance(5.0)

    assert rig.state() is CheckState.READY


async def test_a_named_container_that_the_pod_does_not_have_fails_the_check() -> None:
    containers = Containers("readiness-gate")
    rig = Rig(following=containers.follow("tomcat"))
    App(containers, rig.clock.time()).running("containerd://one")
    async with rig.running():
        await rig.clock.advance(2 * PERIOD)

    assert rig.probes == 0
    assert rig.state() is CheckState.NOT_READY
    assert gate(rig)[2] is GateReason.FAILED
    assert "container tomcat is not in this Pod" in gate(rig)[3]


async def test_without_a_pod_seen_the_check_runs_as_it_always_did() -> None:
    containers = Containers("readiness-gate")
    rig = Rig(following=containers.follow(None))
    async with rig.running():
        await rig.clock.advance(PERIOD)

    assert rig.probes >= 1
    assert rig.state() is CheckState.READY


async def test_a_probe_result_from_before_a_restart_does_not_count_for_the_new_instance() -> None:
    rig, app = rig_with_app(Timing(period=PERIOD, success_threshold=2))
    app.running("containerd://one")
    async with rig.running():
        await rig.clock.advance(jitter())
        assert rig.state() is CheckState.READY
        app.restarts = 1
        app.running("containerd://two")
        await settle()
        counted = rig.probes

    # The reset came first: one success after it, the threshold needs two.
    assert counted == 3
    assert rig.state() is CheckState.PENDING
