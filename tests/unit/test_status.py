"""The status adapter, row by row of the design's tables."""

import pytest
from prefect.client.schemas.objects import StateType

from deploy_runs.status import (
    STEP_INDICATORS,
    STOPPED_STEP_MESSAGE,
    RunStatus,
    StepStatus,
    run_status,
    step_status,
)


def test_status_values_are_the_product_words():
    assert [s.value for s in RunStatus] == [
        "Started", "In Progress", "Completed", "Failed", "Paused", "Stopped"]
    assert [s.value for s in StepStatus] == ["Pending", "Running", "Completed", "Failed", "Skipped"]
    assert RunStatus.COMPLETED == "Completed"


@pytest.mark.parametrize(
    ("state_type", "name", "step_started", "expected"),
    [
        (StateType.SCHEDULED, "Scheduled", False, RunStatus.STARTED),
        (StateType.SCHEDULED, "Late", False, RunStatus.STARTED),
        (StateType.PENDING, "Pending", False, RunStatus.STARTED),
        (StateType.RUNNING, "Running", False, RunStatus.STARTED),
        (StateType.RUNNING, "Running", True, RunStatus.IN_PROGRESS),
        (StateType.SCHEDULED, "Resuming", True, RunStatus.IN_PROGRESS),
        (StateType.PAUSED, "Paused", True, RunStatus.PAUSED),
        (StateType.PAUSED, "Suspended", True, RunStatus.PAUSED),
        (StateType.PAUSED, "Paused", False, RunStatus.PAUSED),
        (StateType.COMPLETED, "Completed", True, RunStatus.COMPLETED),
        (StateType.FAILED, "Failed", True, RunStatus.FAILED),
        (StateType.CRASHED, "Crashed", True, RunStatus.FAILED),
        (StateType.CANCELLING, "Cancelling", True, RunStatus.STOPPED),
        (StateType.CANCELLED, "Cancelled", True, RunStatus.STOPPED),
        (None, None, False, RunStatus.STARTED),
    ],
)
def test_run_status_maps_each_prefect_flow_state(state_type, name, step_started, expected):
    assert run_status(state_type, name, step_started=step_started) is expected


def test_run_status_accepts_state_type_strings_from_json():
    assert run_status("COMPLETED", "Completed", step_started=True) is RunStatus.COMPLETED


def test_timed_out_flow_counts_as_failed():
    # Prefect reports a flow timeout as FAILED named "TimedOut".
    assert run_status(StateType.FAILED, "TimedOut", step_started=True) is RunStatus.FAILED


@pytest.mark.parametrize("active", [RunStatus.STARTED, RunStatus.IN_PROGRESS, RunStatus.PAUSED])
def test_planned_step_without_task_run_is_pending_while_run_is_active(active):
    assert step_status(None, None, None, active).status is StepStatus.PENDING


@pytest.mark.parametrize("ended", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED])
def test_planned_step_never_started_is_skipped_once_run_ended(ended):
    assert step_status(None, None, None, ended).status is StepStatus.SKIPPED


def test_running_task_is_running():
    assert step_status(StateType.RUNNING, "Running", None,
                       RunStatus.IN_PROGRESS).status is StepStatus.RUNNING


def test_completed_task_is_completed():
    view = step_status(StateType.COMPLETED, "Completed", None, RunStatus.IN_PROGRESS)
    assert view.status is StepStatus.COMPLETED


def test_completed_task_named_skipped_is_skipped_with_its_reason():
    view = step_status(StateType.COMPLETED, "Skipped", "Already provisioned.", RunStatus.COMPLETED)
    assert view.status is StepStatus.SKIPPED
    assert view.message == "Already provisioned."


@pytest.mark.parametrize("kind", [StateType.FAILED, StateType.CRASHED])
def test_failed_or_crashed_task_is_failed_with_its_message(kind):
    view = step_status(kind, kind.value.title(), "exit 1", RunStatus.FAILED)
    assert view.status is StepStatus.FAILED
    assert view.message == "exit 1"


@pytest.mark.parametrize("kind", [StateType.RUNNING, StateType.CRASHED, StateType.FAILED,
                                  StateType.CANCELLED])
def test_step_interrupted_by_stop_is_failed_saying_it_was_stopped(kind):
    view = step_status(kind, None, "Execution was aborted by a termination signal",
                       RunStatus.STOPPED)
    assert view.status is StepStatus.FAILED
    assert view.message == STOPPED_STEP_MESSAGE


def test_step_left_running_when_the_run_failed_is_failed():
    view = step_status(StateType.RUNNING, "Running", None, RunStatus.FAILED)
    assert view.status is StepStatus.FAILED


def test_task_run_created_but_never_run_is_pending_then_skipped():
    assert step_status(StateType.PENDING, "Pending", None,
                       RunStatus.IN_PROGRESS).status is StepStatus.PENDING
    assert step_status(StateType.PENDING, "Pending", None,
                       RunStatus.STOPPED).status is StepStatus.SKIPPED


def test_every_step_status_has_the_product_indicator():
    assert STEP_INDICATORS[StepStatus.PENDING].colour == "gray"
    assert STEP_INDICATORS[StepStatus.RUNNING].colour == "blue"
    assert STEP_INDICATORS[StepStatus.RUNNING].animated
    assert STEP_INDICATORS[StepStatus.COMPLETED].colour == "green"
    assert STEP_INDICATORS[StepStatus.FAILED].colour == "red"
    assert STEP_INDICATORS[StepStatus.SKIPPED].colour == "gray"
    assert STEP_INDICATORS[StepStatus.SKIPPED].strikethrough


def test_step_still_recorded_running_in_a_completed_run_is_completed():
    # Prefect records task-run states asynchronously; a completed flow ran every step to the end.
    view = step_status(StateType.RUNNING, "Running", None, RunStatus.COMPLETED)
    assert view.status is StepStatus.COMPLETED
