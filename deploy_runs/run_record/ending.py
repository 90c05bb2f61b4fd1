"""How a deploy run ends, as the flow itself knows it: each step's outcome, the failure
explained (diagnosis, suggesters, earlier runs of the app), and the summary artifact that shows
the run in the Prefect UI. Used only inside the deploy flow."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from deploy_runs.diagnosis import FailureContext, seen_before, signature, suggest
from deploy_runs.models import Failure, Run, Step
from deploy_runs.prefect_compat.sync_calls import markdown_artifact
from deploy_runs.run_record.summary import artifact_key, summary_markdown
from deploy_runs.run_record.writer import RunRecorder
from deploy_runs.status import RunStatus, StepStatus, step_status
from deploy_runs.steps import PLANNED_STEPS
from deploy_runs.steps.context import DeployContext

HISTORY_RUNS = 10
logger = logging.getLogger("deploy_runs.run_record.ending")


def _now() -> datetime:
    return datetime.now(UTC)


class RunOutcome:
    def __init__(self, flow_run: FlowRun, app: str, ref: str | None) -> None:
        self.run_id: UUID = flow_run.id
        self.app = app
        self.ref = ref
        self.started = flow_run.start_time or _now()
        self.steps: dict[str, Step] = {}
        self.rollback_to: UUID | None = None  # a rollback run: the run whose release it puts back

    def step(self, name: str, state: State, started: datetime) -> None:
        view = step_status(state.type, state.name, state.message, RunStatus.IN_PROGRESS)
        ended = _now()
        self.steps[name] = Step(name=name, status=view.status, started_at=started,
                                ended_at=ended, duration=round((ended - started).total_seconds(), 3),
                                message=view.message)

    def skipped(self, name: str, message: str) -> None:
        self.steps[name] = Step(name=name, status=StepStatus.SKIPPED, message=message)

    def explain(self, failure: Failure, ctx: DeployContext, record: RunRecorder) -> Failure:
        """Suggestions (built-in and suggesters'), the signature, and whether earlier runs of
        the app failed the same way; then recorded on the run."""
        context = FailureContext(run_id=str(self.run_id), app_name=self.app, app=ctx.app,
                                 commit=ctx.commit, log_tail=failure.output_tail)
        failure.suggestions = suggest(failure, context)
        failure.signature = signature(failure)
        try:
            history = record.recent_failures(self.app, HISTORY_RUNS)
        except Exception as exc:  # history is a bonus; the failure itself must be recorded
            logger.warning("could not read earlier runs of %s: %s", self.app, exc)
            history = []
        seen = seen_before(failure.signature, history)
        if seen and failure.suggestions:
            failure.suggestions[0].seen_before = seen
        record.failure(failure, self.app)
        return failure

    def publish(self, status: RunStatus, message: str, ctx: DeployContext,
                failure: Failure | None = None) -> None:
        """Write the summary artifact (best effort: a run never fails for its summary)."""
        ended = _now()
        steps = []
        for name in PLANNED_STEPS:
            step = self.steps.get(name)
            if step is None:
                pending = StepStatus.SKIPPED if status.is_final else StepStatus.PENDING
                step = Step(name=name, status=pending)
            steps.append(step)
        run = Run(id=self.run_id, name=f"{self.app}-{ctx.commit[:7]}" if ctx.commit else self.app,
                  app=self.app, status=status, steps=steps, ref=self.ref, commit=ctx.commit,
                  commit_message=ctx.commit_message, started_at=self.started, ended_at=ended,
                  duration=round((ended - self.started).total_seconds(), 3), message=message,
                  error=failure, services=list(ctx.merged_releases().values()),
                  rollback_to=self.rollback_to, current=status is RunStatus.COMPLETED)
        try:
            markdown_artifact(summary_markdown(run), key=artifact_key(self.app),
                              description=f"deploy-runs: {self.app} {status}")
        except Exception as exc:
            logger.warning("could not write the run summary artifact: %s", exc)
