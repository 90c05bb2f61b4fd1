"""How a function becomes a pipeline step: a Prefect task named as the product shows the step,
not cached (each run does its own work), whose log is fully delivered before it ends.

With several servers the step runs on each in turn: its log says which server each part is
from, the step fails as soon as one server fails (naming it; later servers are not touched by
that step), and it is Skipped only when it was skipped on every server."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from deploy_runs.errors import RemoteError, StepFailed
from deploy_runs.prefect_compat.log_delivery import flush_step_logs
from deploy_runs.run_record.writer import failure_from_exception
from deploy_runs.status import SKIPPED_STATE_NAME
from deploy_runs.steplog import StepLog, begin_log_budget, end_log_budget
from deploy_runs.steps.context import DeployContext

if TYPE_CHECKING:
    from blocks import Application
    from deploy_runs.run_record.writer import RunRecorder


def _no_inputs(app: Application, commit: str | None) -> None:
    return None


@dataclass(frozen=True)
class StepSpec:
    """Everything about a step besides its code, declared once in the step's own module; the
    planned step list, retry's input hashes, time limits and diagnosis derive from it.

    - `name`: as the product shows it (the task run's name);
    - `limit`: the `timeouts` setting that limits it (a field of the app's `Timeouts`; "run":
      only the whole run's limit);
    - `inputs(app, commit)`: what its work depends on (JSON-able, no secret value): a retry
      reuses the step while these, and every earlier step's, are unchanged;
    - `diagnosis`: kinds of the failure rules (`diagnosis.RULES`, `scoped=True`) that apply
      in this step only;
    - `carry(ctx, labels, record)`: when a retry reuses the step, put what it found out (read
      back from the earlier run's labels) into `ctx` and record it on this run.
    """

    name: str
    limit: str = "run"
    inputs: Callable[[Application, str | None], Any] = _no_inputs
    diagnosis: tuple[str, ...] = ()
    carry: Callable[[DeployContext, dict[str, Any], RunRecorder], None] | None = None


def step(spec: StepSpec) -> Callable[[Callable[[DeployContext], Any]], Task]:
    """Make `fn` the step `spec` declares: a Prefect task (`.spec` on it is the declaration)."""
    name = spec.name

    def decorate(fn: Callable[[DeployContext], Any]) -> Task:
        @functools.wraps(fn)
        def body(ctx: DeployContext) -> Any:
            ctx.begin_step(spec)
            begin_log_budget(ctx.app.log_limit_mb)
            try:
                if not ctx.multi:
                    return fn(ctx)
                return _on_each_server(fn, ctx)
            except (RemoteError, StepFailed) as exc:
                # The step failed: its task run's state says what broke, in one line, not
                # Prefect's "Task run encountered an exception CommandFailed: command exited
                # with code 1: $ ...". The exception goes on to the flow as the state's data.
                return Failed(message=failure_from_exception(name, exc).message, data=exc)
            finally:
                ctx.current = 0
                end_log_budget()
                flush_step_logs()

        made = task(name=name, task_run_name=name, cache_policy=NO_CACHE,
                    persist_result=False)(body)
        made.spec = spec  # type: ignore[attr-defined]
        return made

    return decorate


def _on_each_server(fn: Callable[[DeployContext], Any], ctx: DeployContext) -> Any:
    log = StepLog()
    results = []
    for index in range(len(ctx.servers)):
        ctx.current = index
        where = ctx.label(ctx.server)
        log.info("on server %s (%d of %d)", where, index + 1, len(ctx.servers))
        try:
            results.append(fn(ctx))
        except Exception as exc:
            exc.server = where  # type: ignore[attr-defined] - read by failure_from_exception
            raise
    skipped = [r for r in results if isinstance(r, State) and r.name == SKIPPED_STATE_NAME]
    if results and len(skipped) == len(results):
        return skipped[0]
    return next((r for r in results if not isinstance(r, State)), None)
