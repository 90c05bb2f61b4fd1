"""Reading runs back from Prefect: a flow run of `deploy-app` and its task runs become a `Run`
in the product's vocabulary (every planned step listed, in order, Pending ones too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.schemas.objects import FlowRun, StateType, TaskRun

from deploy_runs.models import Failure, Run, Step
from deploy_runs.run_record.facts import TRIGGER_PREFIX, fact_label, services_from_labels
from deploy_runs.status import RunStatus, StepStatus, run_status, step_status
from deploy_runs.steps import PLANNED_STEPS

DEPLOY_FLOW = "deploy-app"


def _seconds(start, end) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _uuid(value: object) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def latest_by_step(task_runs: Sequence[TaskRun]) -> dict[str, TaskRun]:
    """The newest task run of each planned step (a step may have been tried more than once)."""
    latest: dict[str, TaskRun] = {}
    for task_run in sorted(task_runs, key=lambda t: t.created or t.expected_start_time or 0):
        if task_run.name in PLANNED_STEPS:
            latest[task_run.name] = task_run
    return latest


def run_from_prefect(flow_run: FlowRun, task_runs: Sequence[TaskRun],
                     failure: Failure | None = None) -> Run:
    by_step = latest_by_step(task_runs)
    state = flow_run.state
    status = run_status(state.type if state else None, state.name if state else None,
                        step_started=bool(by_step))
    steps: list[Step] = []
    for name in PLANNED_STEPS:
        task_run = by_step.get(name)
        task_state = task_run.state if task_run else None
        view = step_status(task_state.type if task_state else None,
                           task_state.name if task_state else None,
                           task_state.message if task_state else None, status)
        started = task_run.start_time if task_run else None
        ended = task_run.end_time if task_run else None
        steps.append(Step(name=name, status=view.status, started_at=started,
                          ended_at=ended, duration=_seconds(started, ended),
                          message=view.message))
    if failure is None and status is RunStatus.FAILED:
        failed = next((s.name for s in steps if s.status is StepStatus.FAILED), "")
        failure = Failure(step=failed, message=(state.message if state else None) or "the run failed")
    labels = flow_run.labels or {}
    app = str(labels.get(fact_label("app")) or flow_run.parameters.get("app") or "")
    ref = labels.get(fact_label("ref")) or flow_run.parameters.get("ref") or None
    run = Run(
        id=flow_run.id,
        name=flow_run.name,
        app=app,
        status=status,
        steps=steps,
        ref=str(ref) if ref else None,
        commit=str(labels[fact_label("commit")]) if labels.get(fact_label("commit")) else None,
        commit_message=str(labels.get(fact_label("commit-message")) or "") or None,
        trigger=next((t.removeprefix(TRIGGER_PREFIX) for t in flow_run.tags or []
                      if t.startswith(TRIGGER_PREFIX)), None),
        created_at=flow_run.created,
        started_at=flow_run.start_time,
        ended_at=flow_run.end_time,
        duration=_seconds(flow_run.start_time, flow_run.end_time),
        message=state.message if state else None,
        error=failure,
        services=services_from_labels(labels),
        rollback_to=_uuid(labels.get(fact_label("rollback-to"))),
    )
    run.settled = settled(status, by_step)
    return run


# Whether a run is recorded for good: the one rule and the one wait, used by every reader
# (get_run, wait, the log followers, the CLI's views) ---------------------------------------

# How long after a run's end its steps' states may still be arriving (Prefect records task runs
# from events, a little after the flow run's own state; under load this takes seconds). A run
# that ended longer ago is taken as it is: a step whose process died is never recorded.
SETTLE_SECONDS = 10.0


def settled(status: RunStatus, by_step: dict[str, TaskRun]) -> bool:
    """Whether no step's state can still change (pure): no step is Running or Pending, or
    without a recorded state yet (a task run can be read between its row and its state being
    written: it would show Skipped), and - when the run completed, so every step ran or was
    skipped - every step's task run has arrived."""
    return not any(t.state is None or t.state.type in (StateType.RUNNING, StateType.PENDING)
                   for t in by_step.values()) and (
        status is not RunStatus.COMPLETED or all(name in by_step for name in PLANNED_STEPS))


def finished(run: Run, now: datetime | None = None) -> bool:
    """Whether `run` has ended and will read the same from now on (pure): every step is
    recorded (`settled`), or the run ended more than SETTLE_SECONDS ago."""
    if not run.status.is_final:
        return False
    now = now or datetime.now(UTC)
    return run.settled or run.ended_at is None or \
        (now - run.ended_at).total_seconds() > SETTLE_SECONDS


async def read_finished(read: Callable[[], Awaitable[Run]], patience: float = SETTLE_SECONDS,
                        interval: float = 0.05) -> Run:
    """`read()` the run, and again while it has ended but is not `finished` yet, for at most
    `patience` seconds by this clock. A run still going is returned as read."""
    deadline = time.monotonic() + patience
    while True:
        run = await read()
        if not run.status.is_final or finished(run) or time.monotonic() > deadline:
            return run
        await asyncio.sleep(interval)


# A run still Scheduled this long after it was due has not been taken by a worker: say why
# (a worker of deploy-runs asks for runs 4 times a second; Prefect's default is every 10 s).
OVERDUE_SECONDS = 3.0
# A work queue no worker asked for runs for this long has no worker serving it.
NO_WORKER_SECONDS = 15.0


def overdue(flow_run: FlowRun, now: datetime) -> bool:
    """Whether a run is still waiting for a worker OVERDUE_SECONDS after it was due (pure)."""
    state = flow_run.state
    due = flow_run.expected_start_time or flow_run.created
    return bool(state and state.type is StateType.SCHEDULED and flow_run.work_pool_name
                and due and (now - due).total_seconds() > OVERDUE_SECONDS)


def waiting_reason(pool: str, last_polled: datetime | None, now: datetime,
                   paused: bool = False, stale: float = NO_WORKER_SECONDS) -> str | None:
    """Why an overdue run waits, from its work pool's facts (pure): None when a worker asked
    for runs within `stale` seconds (the run is about to start, or the pool's workers are all
    busy)."""
    start = (f"Start one: `deploy-runs worker --pool {pool}` (the local stack: "
             "`deploy-runs prefect up`).")
    if paused:
        return f"Work pool {pool!r} is paused: resume it with `prefect work-pool resume {pool}`."
    if last_polled is None:
        return f"No worker serves work pool {pool!r}: none has asked it for runs yet. {start}"
    ago = (now - last_polled).total_seconds()
    if ago <= stale:
        return None
    return (f"No worker serves work pool {pool!r}: one last asked for runs at "
            f"{last_polled.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_ago(ago)} ago). {start}")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
