"""The records a user reads: a run, its steps and, when it broke, its failure."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

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
    port: Literal["proxy", "direct"] | None = Field(
        None, description="Who serves the public port: the server's reverse proxy (a replaced "
                          "container was switched with no downtime) or the container itself.")


class Run(BaseModel):
    id: UUID
    name: str
    app: str
    status: RunStatus
    steps: list[Step]
    ref: str | None = Field(None, description="The ref asked for; None means the branch head.")
    commit: str | None = Field(None, description="The commit SHA that was deployed.")
    commit_message: str | None = None
    trigger: str | None = Field(
        None, description="deploy, redeploy, retry (from deploy-runs), prefect (a Prefect "
                          "deployment run: UI, CLI, schedule) or in-process (the flow called "
                          "in a Python process).")
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = Field(None, description="Seconds, once the run has ended.")
    message: str | None = Field(None, description="The final state's message, if any.")
    error: Failure | None = None
    services: list[ServiceRelease] = Field(
        default_factory=list, description="Per service: rebuilt or reused, replaced or kept.")
    waiting_reason: str | None = Field(
        None, description="Why a Started run has not begun, when deploy-runs can tell: no "
                          "worker serves its work pool (since when one last asked for runs, "
                          "and how to start one), or the pool is paused.")

    rollback_to: UUID | None = Field(
        None, description="A rollback run: the run whose release it put back.")
    current: bool = Field(
        False, description="Whether this run's release is the app's current one (its newest "
                            "Completed run).")
    settled: bool = Field(
        True, description="Whether Prefect has recorded every step's state for good: False "
                          "while a step runs, and for a moment after the run ended (task-run "
                          "states trail the run's own). The rule: deploy_runs.run_record.reader.settled.")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


# --- history: comparisons, statistics, recurring failures, log search ---------------------

class StepComparison(BaseModel):
    name: str
    status_a: StepStatus
    status_b: StepStatus
    duration_a: float | None = None
    duration_b: float | None = None
    delta: float | None = Field(None, description="duration_b - duration_a, seconds.")


class ConfigDiff(BaseModel):
    """What changed in the app's configuration between two runs. Environment variables by
    NAME only (values never appear; secret values are not even compared)."""

    env_added: list[str] = Field(default_factory=list, description="SERVICE.NAME")
    env_removed: list[str] = Field(default_factory=list)
    env_changed: list[str] = Field(default_factory=list)
    secrets_added: list[str] = Field(default_factory=list)
    secrets_removed: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list, description="e.g. 'web: 8080 -> 8081'")
    health_checks: list[str] = Field(default_factory=list)
    services_added: list[str] = Field(default_factory=list)
    services_removed: list[str] = Field(default_factory=list)
    other: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)


class LogDivergence(BaseModel):
    """Where the failing step's output first differs between the two runs."""

    step: str
    line: int = Field(description="1-based line number in the step's output.")
    a: list[str]
    b: list[str]


class RunComparison(BaseModel):
    run_a: Run
    run_b: Run
    steps: list[StepComparison]
    duration_delta: float | None = None
    commits_between: list[str] | None = Field(
        None, description="'SHA subject' from A (excluded) to B, when a repository was given.")
    rebuilt_a: list[str] = Field(default_factory=list)
    rebuilt_b: list[str] = Field(default_factory=list)
    config: ConfigDiff | None = Field(None, description="None when a run recorded no config.")
    error_a: Failure | None = None
    error_b: Failure | None = None
    divergence: LogDivergence | None = None


class DayCount(BaseModel):
    period: str = Field(description="A day (YYYY-MM-DD) or an ISO week (YYYY-Www).")
    deploys: int
    failed: int = 0


class Trend(BaseModel):
    current: float | None
    previous: float | None
    change: float | None = Field(None, description="current - previous")


class RunStats(BaseModel):
    app: str
    days: int
    since: datetime
    runs: int
    completed: int
    failed: int
    stopped: int
    success_rate: float | None = Field(None, description="completed / (completed + failed)")
    per_day: list[DayCount]
    per_week: list[DayCount]
    median_duration: float | None = None
    p90_duration: float | None = None
    step_medians: dict[str, float] = Field(default_factory=dict)
    step_sample_runs: int = Field(0, description="Runs whose steps the medians cover.")
    time_to_recover: float | None = Field(
        None, description="Median seconds from a failed run to the end of the next completed one.")
    recoveries: int = 0
    durations: list[float] = Field(default_factory=list,
                                   description="Completed runs' durations, oldest first.")
    trend: dict[str, Trend] = Field(default_factory=dict)


class RecurringFailure(BaseModel):
    signature: str
    kind: str
    step: str
    message: str = Field(description="The normalised error text.")
    example: str = Field(description="One real error text.")
    count: int
    apps: list[str]
    first_seen: datetime | None
    last_seen: datetime | None
    run_ids: list[UUID] = Field(description="Most recent first, at most 5.")


class LogMatch(BaseModel):
    run_id: UUID
    run_name: str | None = None
    app: str | None = None
    step: str | None = None
    time: datetime
    stream: str
    line: str
