"""Which containers a check follows, and what their status in the Pod says."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.containers import Containers, FollowKind, Phase, parse_time

JSON = dict[str, Any]
STARTED = "2026-12-01T10:00:00Z"


def running(name: str, container_id: str, restarts: int = 0, started: str = STARTED) -> JSON:
    return {
        "name": name,
        "containerID": container_id,
        "restartCount": restarts,
        "state": {"running": {"startedAt": started}},
    }


def waiting(name: str, reason: str, restarts: int = 0) -> JSON:
    return {
        "name": name,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason, "message": "back-off 10s restarting"}},
    }


def pod(*statuses: JSON, containers: tuple[str, ...] = ("app", "readiness-gate"),
        sidecars: tuple[str, ...] = (), init_statuses: tuple[JSON, ...] = ()) -> JSON:  # fmt: skip
    return {
        "spec": {
            "containers": [{"name": n} for n in containers],
            "initContainers": [{"name": "setup"}]
            + [{"name": n, "restartPolicy": "Always"} for n in sidecars],
        },
        "status": {
            "containerStatuses": list(statuses),
            "initContainerStatuses": list(init_statuses),
        },
    }


def test_nothing_is_known_before_the_first_pod() -> None:
    assert Containers("readiness-gate").state(None).kind is FollowKind.UNKNOWN


def test_by_default_a_check_follows_every_container_but_the_agents_own() -> None:
    containers = Containers("readiness-gate")
    containers.update(
        pod(
            running("app", "containerd://a"),
            running("worker", "containerd://w"),
            running("readiness-gate", "containerd://g"),
            containers=("app", "worker", "readiness-gate"),
        )
    )

    state = containers.state(None)
    assert state.kind is FollowKind.RUNNING
    assert [i.name for i in state.instances] == ["app", "worker"]
    assert state.started_at == parse_time(STARTED)


def test_a_native_sidecar_is_followed_only_when_named_and_read_from_init_statuses() -> None:
    containers = Containers("readiness-gate")
    containers.update(
        pod(
            running("app", "containerd://a"),
            containers=("app",),
            sidecars=("proxy", "readiness-gate"),
            init_statuses=(running("proxy", "containerd://p", restarts=2),),
        )
    )

    assert [i.name for i in containers.state(None).instances] == ["app"]
    (proxy,) = containers.state("proxy").instances
    assert (proxy.container_id, proxy.restart_count) == ("containerd://p", 2)


def test_a_container_that_is_not_running_says_why_with_its_restarts() -> None:
    containers = Containers("readiness-gate")
    containers.update(pod(waiting("app", "CrashLoopBackOff", restarts=3)))

    state = containers.state(None)
    assert state.kind is FollowKind.NOT_RUNNING
    assert state.message == "container app is not running: CrashLoopBackOff (3 restarts)"


def test_a_terminated_container_shows_its_reason_and_exit_code() -> None:
    containers = Containers("readiness-gate")
    terminated = {"name": "app", "restartCount": 1, "containerID": "containerd://a",
                  "state": {"terminated": {"reason": "Error", "exitCode": 137}}}  # fmt: skip
    containers.update(pod(terminated))

    (instance,) = containers.state(None).instances
    assert instance.phase is Phase.TERMINATED
    assert containers.state(None).message == (
        "container app is not running: Error, exit code 137 (1 restart)"
    )


def test_a_container_without_a_status_yet_is_not_running() -> None:
    containers = Containers("readiness-gate")
    containers.update(pod())

    assert containers.state(None).message == "container app is not running: no status yet"


def test_a_named_container_the_pod_does_not_have_is_reported_with_the_closest_name() -> None:
    containers = Containers("readiness-gate")
    containers.update(pod(running("app", "containerd://a")))

    state = containers.state("ap")
    assert state.kind is FollowKind.MISSING
    assert state.message == (
        "container ap is not in this Pod (its containers: app, readiness-gate); did you mean app?"
    )


def test_only_changes_that_matter_to_a_check_count_as_changes() -> None:
    containers = Containers("readiness-gate")
    assert containers.update(pod(running("app", "containerd://a")))
    version = containers.version
    same = pod(running("app", "containerd://a"))
    same["status"]["conditions"] = [{"type": "Ready", "status": "True"}]  # not a container's
    same["status"]["containerStatuses"][0]["ready"] = True

    assert not containers.update(same)
    assert containers.version == version
    assert containers.update(pod(running("app", "containerd://b", restarts=1)))
    assert containers.version == version + 1


def test_a_new_container_id_of_a_running_container_counts_as_a_restart() -> None:
    restarted: list[str] = []
    containers = Containers("readiness-gate", restarted.append)
    containers.update(pod(running("app", "containerd://a")))
    containers.update(pod(waiting("app", "CrashLoopBackOff", restarts=1)))
    containers.update(pod(running("app", "containerd://b", restarts=1)))
    containers.update(pod(running("app", "containerd://b", restarts=1)))

    assert restarted == ["app"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2026-12-01T10:00:00Z", 1796119200.0), ("yesterday", None), (None, None)],
)
def test_kubernetes_times_parse_to_epoch_seconds(text: str | None, expected: float | None) -> None:
    assert parse_time(text) == expected
