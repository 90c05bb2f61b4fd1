"""deploy-app: one deploy run. Its task runs are the steps, in order, on the app's server;
between steps the run checks for Pause and Stop, and during a step a watcher acts on Stop.
Each step records what it found out (commit, services) on the run before it ends."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.states import Cancelled, Completed, Failed, State

from blocks import Application
from blocks.application import check_ref
from deploy_runs.controls import Checkpoint, StopWatcher
from deploy_runs.record import RunRecorder, failure_from_exception
from deploy_runs.steps import PIPELINE, DeployContext

DEFAULT_PAUSE_TIMEOUT = 3600.0


@flow(name="deploy-app", flow_run_name="{app}", persist_result=False, log_prints=False)
def deploy_app(app: str, ref: str | None = None,
               pause_timeout: float = DEFAULT_PAUSE_TIMEOUT) -> State:
    """Deploy the application saved as block `app`, at `ref` (default: its branch head).

    A paused run waits at most `pause_timeout` seconds for Resume, then ends Stopped.
    """
    if ref is not None:
        check_ref(ref)
    flow_run = get_run_context().flow_run
    logger = get_run_logger()
    application = Application.load(app)
    record = RunRecorder(flow_run.id)
    record.begin(app, ref, list(flow_run.tags))
    ctx = DeployContext(run_id=flow_run.id, app=application, ref=ref)
    # After a Prefect suspend (the UI's Pause) the flow restarts from the top: finished steps
    # are not run again, their facts are read back instead.
    done = record.restore(ctx)
    checkpoint = Checkpoint(flow_run.id, pause_timeout, log=logger.info)
    with StopWatcher(flow_run.id, ctx.interrupt) as watcher, ctx:
        for step in PIPELINE:
            if step.name in done:
                logger.info("%s already finished in this run; not running it again", step.name)
                continue
            decision = checkpoint.before_step(step.name)
            if decision.stop:
                return Cancelled(message=decision.message)
            with watcher.step():
                state = step(ctx, return_state=True)
            if ctx.stopped:
                return Cancelled(message=f"{ctx.stopped} ({step.name})")
            if state.is_failed() or state.is_crashed():
                failure = failure_from_exception(step.name, state.result(raise_on_failure=False))
                record.failure(failure)
                return Failed(message=f"{step.name} failed: {failure.message}")
    return Completed(message=f"Deployed {app} at {ctx.commit}")
