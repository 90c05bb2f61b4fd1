"""A small flow for testing the log pipeline with arbitrary commands: the same executor
(`RemoteHost`) and step log (`StepLog`) as the deploy steps, on a sandbox server, inside a task
named like a deploy step. Used where a docker build cannot produce the output under test
(raw bytes, a dropped connection)."""

from __future__ import annotations

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE

from blocks import SSHServer
from deploy_runs.commands import cmd
from deploy_runs.remote import RemoteHost, ServerAddress
from deploy_runs.steplog import StepLog, flush_step_logs

STEP = "Build images"


@task(name=STEP, task_run_name=STEP, cache_policy=NO_CACHE, persist_result=False)
def run_scripts(server: str, scripts: list[str]) -> None:
    block = SSHServer.load(server)
    address = ServerAddress(block.host, block.port, block.username,
                            block.private_key.get_secret_value(), block.host_key)
    log = StepLog()
    try:
        with RemoteHost(address) as host:
            for script in scripts:
                host.run(cmd("sh", "-c", script), log, timeout=120)
    finally:
        flush_step_logs()


@flow(name="log-cases", persist_result=False)
def log_cases(app: str, server: str, scripts: list[str]) -> None:
    run_scripts(server, scripts)


def run_log_cases(app: str, scripts: list[str], server: str = "sandbox-local"):
    """Run the scripts; returns the flow run's final state (its id is the run id)."""
    with tags("deploy-runs", f"app:{app}"):
        return log_cases(app=app, server=server, scripts=scripts, return_state=True)
