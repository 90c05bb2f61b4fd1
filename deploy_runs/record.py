"""What a deploy flow writes about its own run into Prefect, for readers to find later:
tags (to list runs per app), labels (the run's facts: app, ref, commit), the run's name, and
the structured failure (as a flow-run input, Prefect's per-run key-value store)."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client

from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.models import Failure

LABEL = "deploy-runs"
RUN_TAG = "deploy-runs"
FAILURE_KEY = "deploy-runs-failure"


def app_tag(app: str) -> str:
    return f"app:{app}"


def fact_label(name: str) -> str:
    return f"{LABEL}.{name}"


def failure_from_exception(step: str, exc: BaseException | None) -> Failure:
    if isinstance(exc, CommandFailed):
        return Failure(step=step, message=str(exc).split("\n", 1)[0], command=exc.command,
                       exit_code=exc.exit_code, output_tail=exc.output_tail)
    if isinstance(exc, StepFailed):
        return Failure(step=step, message=str(exc), output_tail=exc.evidence)
    if exc is None:
        return Failure(step=step, message="the step failed")
    return Failure(step=step, message=f"{type(exc).__name__}: {exc}")


class RunRecorder:
    """Writes one run's facts. Used only inside the deploy flow."""

    def __init__(self, run_id: UUID) -> None:
        self.run_id = run_id

    def begin(self, app: str, ref: str | None, existing_tags: list[str]) -> None:
        with get_client(sync_client=True) as client:
            tags = sorted(set(existing_tags) | {RUN_TAG, app_tag(app)})
            client.update_flow_run(self.run_id, tags=tags)
            client.update_flow_run_labels(
                self.run_id, {fact_label("app"): app, fact_label("ref"): ref or ""})

    def commit(self, app: str, commit: str, message: str) -> None:
        with get_client(sync_client=True) as client:
            client.update_flow_run(self.run_id, name=f"{app}-{commit[:7]}")
            client.update_flow_run_labels(self.run_id, {
                fact_label("commit"): commit,
                fact_label("commit-message"): message[:500],
            })

    def failure(self, failure: Failure) -> None:
        with get_client(sync_client=True) as client:
            client.create_flow_run_input(self.run_id, key=FAILURE_KEY,
                                         value=failure.model_dump_json())
