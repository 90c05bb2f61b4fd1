"""deploy-app: one deploy run. Its task runs are the steps, in order, on the app's server;
between steps the run checks for Pause and Stop, and during a step a watcher acts on Stop.
Each step records what it found out (commit, services) on the run before it ends. Every
command runs under the step's time limit and the run's; a failure is explained (suggested
fixes) and every run ends with a summary artifact for the Prefect UI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import SyncClientContext, get_run_context
from prefect.states import Cancelled, Completed, Failed, State

from blocks import Application
from blocks.application import check_ref
from deploy_runs import commands, rollback
from deploy_runs.concurrency import SlotRefused, app_slot
from deploy_runs.controls import Checkpoint, StopWatcher
from deploy_runs.errors import InvalidControl
from deploy_runs.models import Failure
from deploy_runs.prefect_compat.sync_calls import load_block, state_result
from deploy_runs.prefect_compat.tls import share_tls_context_in_run_process
from deploy_runs.releases import prune_server, releases_to_keep
from deploy_runs.remote import CollectingSink
from deploy_runs.run_record.ending import RunOutcome
from deploy_runs.run_record.writer import RunRecorder, failure_from_exception
from deploy_runs.status import SKIPPED_STATE_NAME, RunStatus
from deploy_runs.steps import PIPELINE, PLANNED_STEPS, DeployContext, StepSpec
from deploy_runs.steps.build import NAME as BUILD
from deploy_runs.steps.context import servers_of
from deploy_runs.steps.fetch import NAME as FETCH

DEFAULT_PAUSE_TIMEOUT = 3600.0
# work between steps (a rollback's image check, the clean-up after a Completed run): under the
# Start application step's time limit
BETWEEN_STEPS = StepSpec("Between steps", limit="start")


@task(cache_policy=NO_CACHE, persist_result=False)
def skipped_step(message: str) -> State:
    """Stands for a step that does not run: reused by a retry, or after a failed step."""
    return Completed(name=SKIPPED_STATE_NAME, message=message)


@flow(name="deploy-app", flow_run_name="{app}", persist_result=False, log_prints=False)
async def deploy_app(app: str, ref: str | None = None,
                     pause_timeout: float = DEFAULT_PAUSE_TIMEOUT,
                     retry_of: str | None = None,
                     concurrency: Literal["queue", "reject", "replace"] | None = None,
                     rollback_to: str | None = None) -> State:
    """Deploy the application saved as block `app`, at `ref` (default: its branch head).

    A paused run waits at most `pause_timeout` seconds for Resume, then ends Stopped.
    `retry_of`: a failed run of the same app whose completed steps are reused while their
    inputs (commit, configuration) are unchanged; the run starts at the first step to redo.
    `concurrency`: this run's policy while another run of the app holds its slot, instead of
    the app's (a push takes `replace`: a burst of pushes deploys the newest commit).
    `rollback_to`: put back the release of this Completed run of the app ("previous": the one
    before the current release) instead of deploying `ref`: its images (no build while they are
    on the servers) and its runtime configuration, with the app's secrets as they are now.

    In Python: `asyncio.run(deploy_app("shop"))`, or `run_in_process("shop")`.
    """
    # a worker's run process makes several API clients: one TLS context for all (not in a
    # process that calls the flow itself: its own clients may need contexts of their own)
    share_tls_context_in_run_process()
    # The steps are synchronous (SSH, Prefect's sync client) and run in a thread of their own
    # (with the run's context). The flow is async because Prefect's sync engine ends each run
    # by joining its heartbeat thread, which sleeps in whole seconds: every run took up to a
    # second longer (measured: run times quantised to whole seconds + 0.08 s).
    return await asyncio.to_thread(_in_step_thread, app, ref, pause_timeout, retry_of,
                                   concurrency, rollback_to)


def run_in_process(app: str, ref: str | None = None, **options: object) -> State:
    """Run one deploy in this process (no worker), from synchronous code; its final state."""
    return asyncio.run(deploy_app(app, ref, return_state=True, **options))


def _in_step_thread(app: str, ref: str | None, pause_timeout: float,
                    retry_of: str | None, concurrency: str | None,
                    rollback_to: str | None) -> State:
    # One sync API client for the thread, as Prefect's sync engine provides to a sync flow
    # (without it each get_client() builds a client: ~25 ms a call, measured).
    with SyncClientContext.get_or_create():
        return _deploy(app, ref, pause_timeout, retry_of, concurrency, rollback_to)


def _deploy(app: str, ref: str | None, pause_timeout: float, retry_of: str | None,
            concurrency: str | None = None, rollback_to: str | None = None) -> State:
    if ref is not None:
        check_ref(ref)
    flow_run = get_run_context().flow_run
    logger = get_run_logger()
    application = load_block(Application, app)
    record = RunRecorder(flow_run.id)
    record.begin(application, ref, list(flow_run.tags), flow_run.deployment_id is not None)
    ctx = DeployContext(run_id=flow_run.id, app=application, ref=ref)
    outcome = RunOutcome(flow_run, app, ref)
    done: set[str] = set()
    checkpoint = Checkpoint(flow_run.id, pause_timeout, log=logger.info, began=flow_run.state)

    def end(status: RunStatus, state: State, failure: Failure | None = None) -> State:
        if failure is not None:
            # the steps that will not run show Skipped in the Prefect UI too
            for step in PIPELINE:
                if step.name not in outcome.steps and step.name not in done:
                    message = f"Not run: the run failed at {failure.step}."
                    skipped_step.with_options(name=step.name, task_run_name=step.name)(message)
                    outcome.skipped(step.name, message)
        outcome.publish(status, state.message or "", ctx, failure)
        return state

    try:
        ctx.servers = servers_of(application)
        target = rollback.find_target(app, rollback_to, flow_run.id) if rollback_to else None
    except (ValueError, InvalidControl) as exc:
        failure = outcome.explain(Failure(step=PLANNED_STEPS[0], message=str(exc)), ctx, record)
        return end(RunStatus.FAILED, Failed(message=f"{PLANNED_STEPS[0]}: {exc}"), failure)
    if target is not None:
        # the release's runtime configuration (the app's secrets as they are now), its commit
        ctx.app = application.model_copy(update={"services": target.services})
        ctx.ref = target.commit
        outcome.rollback_to = target.run_id
        record.rollback(target.run_id, ctx.app)
        logger.info("Rolling back %s to run %s (commit %s)", app, target.run_id,
                    target.commit[:12])

    # one active run per application: wait for (or, by policy, give up) the app's slot
    slot = contextlib.ExitStack()
    try:
        slot.enter_context(app_slot(app, flow_run.id, concurrency or application.concurrency,
                                    log=logger.info))
    except SlotRefused as exc:
        logger.warning("%s", exc)
        return end(RunStatus.STOPPED, Cancelled(message=str(exc)))

    with slot, StopWatcher(flow_run.id, ctx.interrupt) as watcher, ctx:
        # After a Prefect suspend (the UI's Pause) the flow restarts from the top: finished
        # steps are not run again, their facts are read back instead. Read once the slot is
        # ours, so no other process of this run is still in a step. (Not by run_count: Prefect
        # does not count a resume from a suspend as a new run.)
        done.update(record.restore(ctx))
        reuse = [] if done or not retry_of else record.reuse(UUID(retry_of), ctx, PLANNED_STEPS)
        skip_reason = ""
        ctx.start_run_clock()
        for step in PIPELINE:
            if step.name in done:
                logger.info("%s already finished in this run; not running it again", step.name)
                continue
            if target is not None and step.name == FETCH and not reuse:
                reuse, skip_reason = _rollback_reuse(ctx, target, record, logger)
            if step.name in reuse:
                message = skip_reason or f"Reused from run {retry_of} (same inputs)."
                skipped_step.with_options(name=step.name, task_run_name=step.name)(message)
                outcome.skipped(step.name, message)
                continue
            waited = time.monotonic()
            decision = checkpoint.before_step(step.name)
            ctx.extend_run_clock(time.monotonic() - waited)
            if decision.stop:
                return end(RunStatus.STOPPED, Cancelled(message=decision.message))
            if ctx.run_deadline and time.monotonic() > ctx.run_deadline[0]:
                failure = outcome.explain(
                    Failure(step=step.name, message=ctx.run_deadline[1], timed_out=True),
                    ctx, record)
                return end(RunStatus.FAILED, Failed(message=f"{step.name}: {failure.message}"),
                           failure)
            started = datetime.now(UTC)
            with watcher.step():
                state = step(ctx, return_state=True)
            outcome.step(step.name, state, started)
            if ctx.stopped:
                return end(RunStatus.STOPPED, Cancelled(message=f"{ctx.stopped} ({step.name})"))
            if state.is_failed() or state.is_crashed():
                failure = outcome.explain(
                    failure_from_exception(step.name,
                                           state_result(state)),
                    ctx, record)
                return end(RunStatus.FAILED,
                           Failed(message=f"{step.name} failed: {failure.message}"), failure)
        # still holding the app's slot: no other run of the app is between steps
        prune_releases(ctx, record, logger)
        try:
            record.release(ctx.app)  # what a rollback to this run puts back
        except Exception as exc:
            logger.warning("Could not record this release's configuration: %s", exc)
    return end(RunStatus.COMPLETED, Completed(message=f"Deployed {app} at {ctx.commit}"))


def _rollback_reuse(ctx: DeployContext, target: rollback.Target, record: RunRecorder,
                    logger: logging.LoggerAdapter) -> tuple[list[str], str]:
    """Before Fetch source of a rollback: the steps to skip (Fetch and Build while every image
    of the release is on every server) and why."""
    ctx.begin_step(BETWEEN_STEPS)
    missing = rollback.missing_images(ctx, target, CollectingSink())
    if missing:
        logger.info("Rollback to run %s: image(s) %s no longer on the server(s) (pruned): "
                    "fetching commit %s and building again", target.run_id, ", ".join(missing),
                    target.commit[:12])
        return [], ""
    rollback.put_back(ctx, target)
    record.commit(ctx.app, target.commit, target.commit_message)
    record.services(ctx.merged_releases())
    return [FETCH, BUILD], f"Skipped: {target.reason()}."


def prune_releases(ctx: DeployContext, record: RunRecorder, logger: logging.LoggerAdapter) -> None:
    """Remove the images and stopped containers of the app's releases older than its newest
    `keep_releases` from every server (deploy_runs/releases.py); the run's log lists them. Best
    effort: a run that deployed is not failed by its clean-up."""
    releases = ctx.merged_releases().values()
    if not any(r.build == "rebuilt" for r in releases):
        return  # no new image, no new release: nothing more to keep than before (~1 s saved)
    try:
        current = [release.image for release in releases]
        keep = releases_to_keep([("Completed", current), *record.app_releases(ctx.app.name)],
                                ctx.app.keep_releases)
        containers = [commands.container_name(ctx.app.name, s.name) for s in ctx.app.services]
        ctx.begin_step(BETWEEN_STEPS)
        # the commands' output is not logged: outside a step, output records and the run's own
        # lines travel through different log workers, and a follower reading by time could
        # pass one before the other arrived; the one line per server says what was removed
        for index in range(len(ctx.servers)):
            ctx.current = index
            stopped, removed = prune_server(ctx.host(), ctx.app.name, keep, containers,
                                            CollectingSink())
            where = f" on {ctx.label(ctx.server)}" if ctx.multi else ""
            logger.info("Pruned%s: %s (keeping the newest %d release(s))", where,
                     ", ".join([*(f"image {t}" for t in removed),
                                *(f"stopped container {n}" for n in stopped)]) or "nothing to remove",
                     ctx.app.keep_releases)
    except Exception as exc:
        logger.warning("Could not remove old releases (the deploy itself is done): %s", exc)
    finally:
        ctx.current = 0
