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


SuggestionKind = Literal[
    "port-in-use", "disk-full", "ssh-auth", "host-key-mismatch", "server-unreachable",
    "docker-daemon-down", "docker-permission", "dockerfile-missing", "build-file-missing",
    "build-command-failed", "image-not-found", "out-of-memory", "container-exited",
    "health-check-failed", "git-ref-not-found", "git-repo-not-found", "command-timeout",
]


class Suggestion(BaseModel):
    """A suggested fix for a failure, with the line of evidence that led to it."""

    kind: str = Field(description="One of the built-in kinds, or a suggester's own.")
    title: str
    detail: str = Field(description="What to change, concretely.")
    evidence: str = Field("", description="The output line that triggered the suggestion.")
    source: str = Field("built-in", description="`built-in`, or the name of the suggester.")
    seen_before: str | None = Field(
        None, description="When this failure happened before for the app, e.g. "
                          "'seen in 3 of the last 10 runs, first on 2026-11-20 10:02 UTC'.")


class Failure(BaseModel):
    """What broke: the step, the command, its exit code and the last lines it printed, and
    what to do about it."""

    step: str
    message: str
    command: str | None = None
    exit_code: int | None = None
    output_tail: list[str] = Field(default_factory=list)
    timed_out: bool = False
    suggestions: list[Suggestion] = Field(default_factory=list)
    signature: str | None = Field(
        None, description="Kind, step and error text with volatile parts (ids, ports, paths, "
                          "times) normalised: equal for the same failure in different runs.")

    def text(self) -> str:
        """Everything diagnosis reads: the message, the command and its last output lines."""
        lines = [self.message]
        if self.command:
            lines.append(f"$ {self.command}")
        lines += self.output_tail
        return "\n".join(lines)


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
