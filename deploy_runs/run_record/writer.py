"""What a deploy flow writes about its own run into Prefect, for readers to find later (the
names and encodings: `facts`): its tags, labels (app, ref, commit, inputs, services), name and
structured failure (a flow-run input, Prefect's per-run key-value store)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.client.orchestration import get_client

from deploy_runs.diagnosis import cause_line
from deploy_runs.errors import CommandFailed, CommandTimedOut, StepFailed, StepTimedOut
from deploy_runs.inputs import step_inputs
from deploy_runs.models import Failure, ServiceRelease
from deploy_runs.run_record.facts import (
    FAILURE_KEY,
    FAILURE_LEVEL,
    FAILURE_LOGGER,
    RELEASE_KEY,
    RUN_TAG,
    TRIGGER_PREFIX,
    app_tag,
    config_snapshot,
    fact_label,
    failure_index_line,
    services_from_labels,
    trigger_tag,
)

if TYPE_CHECKING:
    from blocks import Application
    from deploy_runs.steps.context import DeployContext


def failure_from_exception(step: str, exc: BaseException | None) -> Failure:
    failure = _failure_from_exception(step, exc)
    service = getattr(exc, "service", None)  # set when services worked side by side
    if service and not failure.message.startswith(f"{service}:"):
        failure = failure.model_copy(update={"message": f"{service}: {failure.message}"})
    server = getattr(exc, "server", None)  # set when the app has several servers
    if server:
        failure = failure.model_copy(update={"message": f"on {server}: {failure.message}"})
    return failure


def _failure_from_exception(step: str, exc: BaseException | None) -> Failure:
    if isinstance(exc, CommandFailed):
        # the headline is what broke (e.g. the build's error line), not "command exited with
        # code 1"; the command and its exit code are kept apart
        said = str(exc).split("\n", 1)[0]
        own = said.removesuffix(f": $ {exc.command}")
        cause = cause_line([own, *exc.output_tail], step)
        return Failure(step=step, message=cause or said, command=exc.command,
                       exit_code=exc.exit_code, output_tail=exc.output_tail,
                       timed_out=isinstance(exc, CommandTimedOut))
    if isinstance(exc, StepFailed):
        return Failure(step=step, message=str(exc), output_tail=exc.evidence,
                       timed_out=isinstance(exc, StepTimedOut))
    if exc is None:
        return Failure(step=step, message="the step failed")
    return Failure(step=step, message=f"{type(exc).__name__}: {exc}")


class RunRecorder:
    """Writes one run's facts. Used only inside the deploy flow."""

    def __init__(self, run_id: UUID) -> None:
        self.run_id = run_id

    def begin(self, app: Application, ref: str | None, existing_tags: list[str],
              from_deployment: bool = True) -> None:
        with get_client(sync_client=True) as client:
            tags = set(existing_tags) | {RUN_TAG, app_tag(app.name)}
            if not any(t.startswith(TRIGGER_PREFIX) for t in tags):
                # started by Prefect (UI, CLI, schedule), or by calling the flow in a process
                tags.add(trigger_tag("prefect" if from_deployment else "in-process"))
            if tags != set(existing_tags):  # runs made by deploy-runs have them already
                client.update_flow_run(self.run_id, tags=sorted(tags))
            client.update_flow_run_labels(self.run_id, {
                fact_label("app"): app.name, fact_label("ref"): ref or "",
                **({fact_label("url"): app.url} if app.url else {}),
                fact_label("config"): json.dumps(config_snapshot(app), sort_keys=True)})

    def commit(self, app: Application, commit: str, message: str) -> None:
        """The commit being deployed, and (now that it is known) each step's input hashes."""
        with get_client(sync_client=True) as client:
            client.update_flow_run(self.run_id, name=f"{app.name}-{commit[:7]}")
            client.update_flow_run_labels(self.run_id, {
                fact_label("commit"): commit,
                fact_label("commit-message"): message[:500],
                fact_label("inputs"): json.dumps(step_inputs(app, commit)),
            })

    def restore(self, ctx: DeployContext) -> set[str]:
        """Steps this run already finished (a restart after a suspend), with their facts put
        back into `ctx`. Empty for a new run."""
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[self.run_id])))
            if not task_runs:
                return set()
            labels = client.read_flow_run(self.run_id).labels or {}
        done = {t.name for t in task_runs if t.state and t.state.is_completed()}
        if labels.get(fact_label("commit")):
            ctx.commit = str(labels[fact_label("commit")])
            ctx.commit_message = str(labels.get(fact_label("commit-message")) or "")
        for release in services_from_labels(labels):
            ctx.releases[release.name] = release
            ctx.images[release.name] = release.image
        return done

    def release(self, app: Application) -> None:
        """The runtime configuration of the release this run completed (its services; no
        secret: those are the app's at the time of a rollback), for a rollback to it."""
        value = json.dumps([s.model_dump(mode="json") for s in app.services])
        with get_client(sync_client=True) as client:
            client.create_flow_run_input(self.run_id, key=RELEASE_KEY, value=value)

    def rollback(self, target_run: UUID, app: Application) -> None:
        """This run puts back the release of `target_run`, with `app`'s configuration (the
        release's services)."""
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(self.run_id, {
                fact_label("rollback-to"): str(target_run),
                fact_label("config"): json.dumps(config_snapshot(app), sort_keys=True)})

    def services(self, releases: dict[str, ServiceRelease]) -> None:
        value = json.dumps([r.model_dump(mode="json") for r in releases.values()])
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(self.run_id, {fact_label("services"): value})

    def failure(self, failure: Failure, app: str) -> None:
        from datetime import UTC, datetime

        from prefect.client.schemas.actions import LogCreate

        with get_client(sync_client=True) as client:
            client.create_flow_run_input(self.run_id, key=FAILURE_KEY,
                                         value=failure.model_dump_json())
            facts = {fact_label("failed-step"): failure.step}
            if failure.suggestions:  # for notifications (deploy_runs/notify.py)
                first = failure.suggestions[0]
                facts[fact_label("suggestion")] = f"{first.title}: {first.detail}"[:500]
            if failure.signature:
                facts[fact_label("failure")] = failure.signature
            client.update_flow_run_labels(self.run_id, facts)
            if failure.signature:
                client.create_logs([LogCreate(
                    name=FAILURE_LOGGER, level=FAILURE_LEVEL, timestamp=datetime.now(UTC),
                    flow_run_id=self.run_id, message=failure_index_line(app, failure))])

    def _earlier_runs(self, app: str, states: list[str], sort: str,
                      limit: int) -> list[Any]:
        """The app's runs before this one in one of `states` (StateType names), by `sort`."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[RUN_TAG, app_tag(app)]),
                    id=FlowRunFilterId(not_any_=[self.run_id]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(
                        any_=[StateType(s) for s in states]))),
                sort=FlowRunSort(sort), limit=limit)

    def app_releases(self, app: str, limit: int = 100) -> list[tuple[str, list[str]]]:
        """(Completed / Failed, images) of the app's ended runs before this one, newest first:
        what `releases.releases_to_keep` decides from."""
        runs = self._earlier_runs(app, ["COMPLETED", "FAILED", "CRASHED"], "END_TIME_DESC", limit)
        return [("Completed" if r.state and r.state.is_completed() else "Failed",
                 [s.image for s in services_from_labels(r.labels or {})]) for r in runs]

    def recent_failures(self, app: str, limit: int = 10) -> list[tuple[str | None, object]]:
        """(failure signature or None, start time) of the app's `limit` runs before this one,
        most recent first."""
        runs = self._earlier_runs(app, ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"],
                                  "START_TIME_DESC", limit)
        return [((r.labels or {}).get(fact_label("failure")), r.start_time) for r in runs]

    def reuse(self, earlier: UUID, ctx: DeployContext, planned: tuple[str, ...]) -> list[str]:
        """For a retry: the leading steps of run `earlier` that completed with the same inputs
        as now, with their facts (commit, images) put into `ctx` and recorded on this run."""
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        from deploy_runs.inputs import reusable_steps

        with get_client(sync_client=True) as client:
            labels = client.read_flow_run(earlier).labels or {}
            task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[earlier])))
        completed = {t.name for t in task_runs if t.state and t.state.is_completed()}
        commit = str(labels.get(fact_label("commit")) or "") or None
        before = json.loads(str(labels.get(fact_label("inputs")) or "{}"))
        reuse = reusable_steps(planned, completed, before, step_inputs(ctx.app, commit))
        from deploy_runs.steps import STEPS

        for spec in STEPS:
            if spec.name in reuse and spec.carry is not None:
                spec.carry(ctx, labels, self)
        return reuse
