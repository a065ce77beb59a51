"""The condition to write for a gate state, the status patch, and reading a Pod's conditions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from sidecar.conditions import (
    Condition,
    desired_condition,
    missing_gate_snippet,
    pod_conditions,
    readiness_gates,
    status_patch,
    stopped_condition,
    timestamp,
)
from sidecar.results import GateReason, GateState

TYPE = "example.com/ready"
NOW = 1_700_000_000.75  # 2023-11-14T22:13:20.75Z
NOW_TEXT = "2023-11-14T22:13:20Z"
EARLIER = "2023-11-01T08:00:00Z"


def passed(message: str = "file APP: /run/ready exists") -> GateState:
    return GateState(key=TYPE, ok=True, pending=False, reason=GateReason.PASSED, message=message)


def failed(message: str = "file APP: /run/ready does not exist") -> GateState:
    return GateState(key=TYPE, ok=False, pending=False, reason=GateReason.FAILED, message=message)


def pending(message: str = "waiting for the checks to decide: file APP") -> GateState:
    return GateState(key=TYPE, ok=False, pending=True, reason=GateReason.PENDING, message=message)


def on_server(state: GateState, since: str | None = EARLIER) -> Condition:
    """The condition as the server holds it after ``state`` was written at ``since``."""
    return Condition(
        type=TYPE,
        status="True" if state.ok else "False",
        reason=str(state.reason),
        message=state.message,
        last_transition_time=since,
    )


# --- desired_condition ---------------------------------------------------------------------------


def test_timestamps_are_rfc3339_in_whole_seconds() -> None:
    assert timestamp(NOW) == NOW_TEXT
    assert timestamp(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "current", [passed(), failed(), pending()], ids=["true", "false", "pending"]
)
def test_pending_never_overrides_an_existing_condition(current: GateState) -> None:
    assert desired_condition(TYPE, pending(), on_server(current), NOW) is None


def test_pending_without_a_condition_writes_false_checks_pending() -> None:
    wanted = desired_condition(TYPE, pending(), None, NOW)

    assert wanted == Condition(
        type=TYPE,
        status="False",
        reason="ChecksPending",
        message="waiting for the checks to decide: file APP",
        last_transition_time=NOW_TEXT,
    )


def test_a_first_condition_gets_a_transition_time_of_now() -> None:
    wanted = desired_condition(TYPE, passed(), None, NOW)

    assert wanted is not None
    assert (wanted.status, wanted.reason) == ("True", "ChecksPassed")
    assert wanted.last_transition_time == NOW_TEXT


@pytest.mark.parametrize("state", [passed(), failed()], ids=["true", "false"])
def test_nothing_is_written_when_the_server_says_the_same(state: GateState) -> None:
    assert (
        desired_condition(TYPE, state, on_server(state, since="2020-01-01T00:00:00Z"), NOW) is None
    )


def test_a_flip_gets_a_new_transition_time() -> None:
    wanted = desired_condition(TYPE, passed(), on_server(failed()), NOW)

    assert wanted is not None
    assert (wanted.status, wanted.reason, wanted.last_transition_time) == (
        "True",
        "ChecksPassed",
        NOW_TEXT,
    )


def test_a_flip_from_pending_to_true_gets_a_new_transition_time() -> None:
    wanted = desired_condition(TYPE, passed(), on_server(pending()), NOW)

    assert wanted is not None
    assert wanted.last_transition_time == NOW_TEXT


def test_a_new_message_with_the_same_status_keeps_the_transition_time() -> None:
    wanted = desired_condition(TYPE, failed("file APP: gone"), on_server(failed()), NOW)

    assert wanted == Condition(
        type=TYPE,
        status="False",
        reason="CheckFailed",
        message="file APP: gone",
        last_transition_time=EARLIER,
    )


def test_a_new_reason_with_the_same_status_keeps_the_transition_time() -> None:
    wanted = desired_condition(TYPE, failed(), on_server(pending()), NOW)

    assert wanted is not None
    assert (wanted.reason, wanted.last_transition_time) == ("CheckFailed", EARLIER)


def test_a_condition_without_a_transition_time_gets_one() -> None:
    wanted = desired_condition(TYPE, failed("other"), on_server(failed(), since=None), NOW)

    assert wanted is not None
    assert wanted.last_transition_time == NOW_TEXT


# --- stopped_condition ---------------------------------------------------------------------------


def test_stopping_turns_a_true_condition_false_with_a_new_transition_time() -> None:
    stopped = stopped_condition(TYPE, on_server(passed()), NOW)

    assert stopped == Condition(
        type=TYPE,
        status="False",
        reason="AgentStopped",
        message="the readiness-gate-sidecar stopped (GATE_ON_SHUTDOWN=false)",
        last_transition_time=NOW_TEXT,
    )


def test_stopping_keeps_the_transition_time_of_a_false_condition() -> None:
    stopped = stopped_condition(TYPE, on_server(failed()), NOW)

    assert (stopped.status, stopped.reason, stopped.last_transition_time) == (
        "False",
        "AgentStopped",
        EARLIER,
    )


def test_stopping_without_a_condition_writes_false() -> None:
    stopped = stopped_condition(TYPE, None, NOW)

    assert (stopped.status, stopped.reason, stopped.last_transition_time) == (
        "False",
        "AgentStopped",
        NOW_TEXT,
    )


def test_stopping_writes_even_when_the_server_already_says_stopped() -> None:
    already = stopped_condition(TYPE, on_server(failed()), NOW)

    assert stopped_condition(TYPE, already, NOW + 60) == already


def test_a_stopped_condition_always_carries_a_transition_time() -> None:
    without_time = Condition(
        type=TYPE,
        status="False",
        reason="AgentStopped",
        message="the readiness-gate-sidecar stopped (GATE_ON_SHUTDOWN=false)",
    )

    stopped = stopped_condition(TYPE, without_time, NOW)

    assert stopped.last_transition_time == NOW_TEXT
    assert stopped.to_json()["lastTransitionTime"] == NOW_TEXT


# --- the patch -----------------------------------------------------------------------------------


def test_the_patch_holds_only_our_conditions_and_the_uid() -> None:
    ours = on_server(passed(), since=NOW_TEXT)

    patch = status_patch([ours], "0c7a5c1e")

    assert patch == {
        "metadata": {"uid": "0c7a5c1e"},
        "status": {
            "conditions": [
                {
                    "type": TYPE,
                    "status": "True",
                    "reason": "ChecksPassed",
                    "message": "file APP: /run/ready exists",
                    "lastTransitionTime": NOW_TEXT,
                }
            ]
        },
    }


@pytest.mark.parametrize("uid", [None, ""])
def test_the_patch_has_no_metadata_without_a_uid(uid: str | None) -> None:
    patch = status_patch([on_server(failed()), on_server(passed())], uid)

    assert list(patch) == ["status"]
    assert [c["status"] for c in patch["status"]["conditions"]] == ["False", "True"]


def test_a_condition_omits_the_fields_it_does_not_have() -> None:
    assert Condition(type=TYPE, status="True").to_json() == {"type": TYPE, "status": "True"}


# --- reading a Pod -------------------------------------------------------------------------------


def test_pod_conditions_reads_every_condition_by_type() -> None:
    pod: dict[str, Any] = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": EARLIER},
                {"type": TYPE, "status": "True", "reason": "ChecksPassed", "message": "ok"},
                {"type": TYPE, "status": "False"},  # a duplicate: the first one counts
                {"status": "True"},  # no type
                {"type": 7, "status": "True"},
            ]
        }
    }

    assert pod_conditions(pod) == {
        "Ready": Condition(type="Ready", status="False", last_transition_time=EARLIER),
        TYPE: Condition(type=TYPE, status="True", reason="ChecksPassed", message="ok"),
    }


@pytest.mark.parametrize(
    "pod", [{}, {"status": None}, {"status": {}}, {"status": {"conditions": None}}]
)
def test_a_pod_without_conditions_has_none(pod: dict[str, Any]) -> None:
    assert pod_conditions(pod) == {}


def test_readiness_gates_lists_the_declared_condition_types() -> None:
    pod = {
        "spec": {
            "readinessGates": [
                {"conditionType": TYPE},
                {"conditionType": "example.com/other"},
                {"notAConditionType": "x"},
                "garbage",
            ]
        }
    }

    assert readiness_gates(pod) == [TYPE, "example.com/other"]


@pytest.mark.parametrize(
    "pod", [{}, {"spec": None}, {"spec": {}}, {"spec": {"readinessGates": None}}]
)
def test_a_pod_without_readiness_gates_declares_none(pod: dict[str, Any]) -> None:
    assert readiness_gates(pod) == []


def test_the_missing_gate_snippet_is_the_yaml_to_add_to_the_pod_spec() -> None:
    snippet = missing_gate_snippet([TYPE, "example.com/other"])

    assert yaml.safe_load(snippet) == {
        "spec": {
            "readinessGates": [{"conditionType": TYPE}, {"conditionType": "example.com/other"}]
        }
    }
    assert snippet.splitlines()[:2] == ["spec:", "  readinessGates:"]
