"""How a function becomes a pipeline step: a Prefect task named as the product shows the step,
not cached (each run does its own work), whose log is fully delivered before it ends."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from deploy_runs.steplog import flush_step_logs
from deploy_runs.steps.context import DeployContext


def step(name: str) -> Callable[[Callable[[DeployContext], Any]], Task]:
    def decorate(fn: Callable[[DeployContext], Any]) -> Task:
        @functools.wraps(fn)
        def body(ctx: DeployContext) -> Any:
            ctx.begin_step(name)
            try:
                return fn(ctx)
            finally:
                flush_step_logs()

        return task(name=name, task_run_name=name, cache_policy=NO_CACHE,
                    persist_result=False)(body)

    return decorate
