"""A small flow for testing the log pipeline with arbitrary commands: the same executor
(`RemoteHost`) and step log (`StepLog`) as the deploy steps, on a sandbox server, inside a task
named like a deploy step. Used where a docker build cannot produce the output under test
(raw bytes, a dropped connection)."""

from __future__ import annotations

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
from prefect.context import get_run_context
from prefect.events.worker import EventsWorker

from blocks import SSHServer
from deploy_runs.commands import cmd
from deploy_runs.prefect_compat.log_delivery import flush_step_logs
from deploy_runs.remote import RemoteHost, ServerAddress
from deploy_runs.steplog import StepLog, begin_log_budget, end_log_budget

STEP = "Build images"


@task(name=STEP, task_run_name=STEP, cache_policy=NO_CACHE, persist_result=False)
def run_scripts(server: str, scripts: list[str], log_limit_mb: float | None = None) -> None:
    block = SSHServer.load(server)
    address = ServerAddress(block.host, block.port, block.username,
                            block.private_key.get_secret_value(), block.host_key)
    if log_limit_mb is not None:  # as a deploy step does with the app's log_limit_mb
        begin_log_budget(log_limit_mb)
    log = StepLog()
    try:
        with RemoteHost(address) as host:
            for script in scripts:
                host.run(cmd("sh", "-c", script), log, timeout=120)
    finally:
        end_log_budget()
        flush_step_logs()


@flow(name="log-cases", persist_result=False)
def log_cases(app: str, server: str, scripts: list[str],
              log_limit_mb: float | None = None) -> None:
    run_scripts(server, scripts, log_limit_mb)


def run_log_cases(app: str, scripts: list[str], server: str = "sandbox-local",
                  log_limit_mb: float | None = None):
    """Run the scripts; returns the flow run's final state (its id is the run id)."""
    with tags("deploy-runs", f"app:{app}"):
        return log_cases(app=app, server=server, scripts=scripts, log_limit_mb=log_limit_mb,
                         return_state=True)


@task(name=STEP, task_run_name=STEP, cache_policy=NO_CACHE, persist_result=False)
def log_then_flush(marker: str) -> dict[str, bool]:
    """Log `marker`, flush the step's log; then: can the API read it, and did the events
    worker (which carries the task-run states) keep running through the flush?"""
    StepLog().info(marker)
    events = [w for w in list(EventsWorker._instances.values()) if isinstance(w, EventsWorker)]
    flush_step_logs()
    task_run_id = get_run_context().task_run.id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
    return {"readable": any(log.message == marker for log in logs),
            "events_worker_running": bool(events) and not any(w._stopped for w in events)}


@flow(name="log-flush", persist_result=False)
def log_flush(marker: str) -> dict[str, bool]:
    return log_then_flush(marker)
