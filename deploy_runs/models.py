"""The records a user reads: a run, its steps and, when it broke, its failure."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field, PrivateAttr

from deploy_runs.status import RunStatus, StepStatus


class Step(BaseModel):
    name: str
    status: StepStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = Field(None, description="Seconds, once the step has ended.")
    message: str | None = None


class Failure(BaseModel):
    """What broke: the step, the command, its exit code and the last lines it printed."""

    step: str
    message: str
    command: str | None = None
    exit_code: int | None = None
    output_tail: list[str] = Field(default_factory=list)


class ServiceRelease(BaseModel):
    """What a run did with one service: its image built or reused, its container replaced or
    kept, and why."""

    name: str
    image: str
    build: Literal["rebuilt", "reused"]
    build_reason: str
    container: Literal["replaced", "kept"] | None = None
    container_reason: str | None = None


class Run(BaseModel):
    id: UUID
    name: str
    app: str
    status: RunStatus
    steps: list[Step]
    ref: str | None = Field(None, description="The ref asked for; None means the branch head.")
    commit: str | None = Field(None, description="The commit SHA that was deployed.")
    commit_message: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = Field(None, description="Seconds, once the run has ended.")
    message: str | None = Field(None, description="The final state's message, if any.")
    error: Failure | None = None
    services: list[ServiceRelease] = Field(
        default_factory=list, description="Per service: rebuilt or reused, replaced or kept.")

    # False while Prefect has not yet recorded the final state of a step that ran (task-run
    # states are written asynchronously, so they can trail the flow run's final state).
    _settled: bool = PrivateAttr(default=True)

    @property
    def settled(self) -> bool:
        return self._settled

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)
