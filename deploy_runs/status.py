"""The run and step status vocabulary of the product page, and the adapter from Prefect states.

Everything here is pure: functions of Prefect state types and names, unit-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the adapter when it runs: the CLI's --help needs no Prefect
    from prefect.client.schemas.objects import StateType


class RunStatus(StrEnum):
    STARTED = "Started"
    IN_PROGRESS = "In Progress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    PAUSED = "Paused"
    STOPPED = "Stopped"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_RUN_STATUSES


_FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})


class StepStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    SKIPPED = "Skipped"


@dataclass(frozen=True)
class Indicator:
    """How a status is shown: the product page's colour, animation and strikethrough."""

    colour: str
    symbol: str
    animated: bool = False
    strikethrough: bool = False


STEP_INDICATORS: dict[StepStatus, Indicator] = {
    StepStatus.PENDING: Indicator("gray", "○"),
    StepStatus.RUNNING: Indicator("blue", "●", animated=True),
    StepStatus.COMPLETED: Indicator("green", "✔"),
    StepStatus.FAILED: Indicator("red", "✖"),
    StepStatus.SKIPPED: Indicator("gray", "⊘", strikethrough=True),
}

RUN_INDICATORS: dict[RunStatus, Indicator] = {
    RunStatus.STARTED: Indicator("gray", "○"),
    RunStatus.IN_PROGRESS: Indicator("blue", "●", animated=True),
    RunStatus.COMPLETED: Indicator("green", "✔"),
    RunStatus.FAILED: Indicator("red", "✖"),
    RunStatus.PAUSED: Indicator("yellow", "⏸"),
    RunStatus.STOPPED: Indicator("gray", "■"),
}

# The name a step's task run state carries when the step decided it had nothing to do.
SKIPPED_STATE_NAME = "Skipped"
STOPPED_STEP_MESSAGE = "Stopped by request while this step was running; it did not finish."


def run_status(state_type: StateType | str | None, state_name: str | None,
               *, step_started: bool) -> RunStatus:
    """Map a deploy flow run's Prefect state to the run vocabulary.

    `step_started` says whether any step of the run has a task run yet: a flow run that is
    RUNNING but still before its first step is only Started.
    """
    from prefect.client.schemas.objects import StateType

    kind = StateType(state_type) if state_type is not None else StateType.SCHEDULED
    if kind in (StateType.SCHEDULED, StateType.PENDING):
        if kind is StateType.SCHEDULED and state_name == "Resuming":
            return RunStatus.IN_PROGRESS
        return RunStatus.STARTED
    if kind is StateType.RUNNING:
        return RunStatus.IN_PROGRESS if step_started else RunStatus.STARTED
    if kind is StateType.PAUSED:
        return RunStatus.PAUSED
    if kind is StateType.COMPLETED:
        return RunStatus.COMPLETED
    if kind in (StateType.CANCELLING, StateType.CANCELLED):
        return RunStatus.STOPPED
    # FAILED, CRASHED and anything Prefect adds later that means "it broke".
    return RunStatus.FAILED


@dataclass(frozen=True)
class StepView:
    status: StepStatus
    message: str | None = None


def step_status(state_type: StateType | str | None, state_name: str | None,
                state_message: str | None, run: RunStatus) -> StepView:
    """Map one planned step (its task run's state, or None when it has none) to the vocabulary."""
    from prefect.client.schemas.objects import StateType

    if state_type is None:
        return StepView(StepStatus.SKIPPED if run.is_final else StepStatus.PENDING)
    kind = StateType(state_type)
    if kind is StateType.COMPLETED:
        if state_name == SKIPPED_STATE_NAME:
            return StepView(StepStatus.SKIPPED, state_message)
        return StepView(StepStatus.COMPLETED, state_message)
    if kind in (StateType.SCHEDULED, StateType.PENDING):
        # Created but never got to run.
        return StepView(StepStatus.SKIPPED if run.is_final else StepStatus.PENDING)
    if run is RunStatus.STOPPED and kind in (
        StateType.RUNNING, StateType.FAILED, StateType.CRASHED,
        StateType.CANCELLING, StateType.CANCELLED,
    ):
        return StepView(StepStatus.FAILED, STOPPED_STEP_MESSAGE)
    if kind is StateType.RUNNING:
        if run is RunStatus.COMPLETED:
            # The flow completes only after every step returned: this task run's final state
            # has not been recorded yet (Prefect records task states asynchronously).
            return StepView(StepStatus.COMPLETED)
        if run.is_final:
            # The run ended under a step that never reported back (the process died).
            return StepView(StepStatus.FAILED, state_message or "The run ended while this step ran.")
        return StepView(StepStatus.RUNNING)
    if kind in (StateType.CANCELLING, StateType.CANCELLED):
        return StepView(StepStatus.FAILED, STOPPED_STEP_MESSAGE)
    if kind is StateType.PAUSED:
        return StepView(StepStatus.RUNNING)
    return StepView(StepStatus.FAILED, state_message)
