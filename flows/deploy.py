"""deploy-app: one deploy run. Its task runs are the steps, in order, on the app's server."""

from __future__ import annotations

from prefect import flow
from prefect.context import get_run_context
from prefect.states import Completed, Failed, State

from blocks import Application
from blocks.application import check_ref
from deploy_runs.record import RunRecorder, failure_from_exception
from deploy_runs.steps import PIPELINE, DeployContext, fetch_source


@flow(name="deploy-app", flow_run_name="{app}", persist_result=False, log_prints=False)
def deploy_app(app: str, ref: str | None = None) -> State:
    """Deploy the application saved as block `app`, at `ref` (default: its branch head)."""
    if ref is not None:
        check_ref(ref)
    flow_run = get_run_context().flow_run
    application = Application.load(app)
    record = RunRecorder(flow_run.id)
    record.begin(app, ref, list(flow_run.tags))
    ctx = DeployContext(run_id=flow_run.id, app=application, ref=ref)
    try:
        for step in PIPELINE:
            state = step(ctx, return_state=True)
            if state.is_failed() or state.is_crashed():
                failure = failure_from_exception(step.name, state.result(raise_on_failure=False))
                record.failure(failure)
                return Failed(message=f"{step.name} failed: {failure.message}")
            if step is fetch_source:
                record.commit(app, ctx.commit or "", ctx.commit_message or "")
    finally:
        ctx.close()
    return Completed(message=f"Deployed {app} at {ctx.commit}")
