"""The warm-start worker builds a run's environment as Prefect's process worker does."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

from prefect.settings import PREFECT_API_URL, temporary_settings

from deploy_runs.prefect_compat.warm_worker import PRELOAD, WarmProcessWorker, WarmStarter


def test_the_run_environment_has_the_run_id_control_channel_and_the_job_env_over_settings():
    run = SimpleNamespace(id=uuid4())
    starter = WarmStarter(cwd=Path("/"), control_channel=None,
                          env={"PREFECT_API_URL": "http://job-api/api", "APP_FLAG": "on",
                               "DROPPED": None})
    with temporary_settings(updates={PREFECT_API_URL: "http://worker-api/api"}):
        env = starter.environment(run, {"PREFECT__CONTROL_PORT": "4242",
                                        "PREFECT__CONTROL_TOKEN": "t"})
    assert env["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert env["PREFECT__CONTROL_PORT"] == "4242" and env["PREFECT__CONTROL_TOKEN"] == "t"
    assert env["PREFECT_API_URL"] == "http://job-api/api"  # the job's env wins, as in Prefect
    assert env["APP_FLAG"] == "on"
    assert "DROPPED" not in env
    assert env["PATH"] == os.environ["PATH"]  # the worker's own environment is kept


def test_without_job_env_the_worker_settings_reach_the_run():
    starter = WarmStarter(cwd=Path("/"), control_channel=None, env={})
    with temporary_settings(updates={PREFECT_API_URL: "http://worker-api/api"}):
        env = starter.environment(SimpleNamespace(id=uuid4()), {})
    assert env["PREFECT_API_URL"] == "http://worker-api/api"
    assert "PREFECT__CONTROL_PORT" not in env


def test_the_worker_serves_process_pools_without_replacing_prefects_process_worker():
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker
    from prefect.workers.process import ProcessWorker

    assert WarmProcessWorker.type == "process"
    assert lookup_type(BaseWorker, "process") is ProcessWorker
    assert "flows.deploy" in PRELOAD


def test_only_flows_of_preloaded_modules_by_module_path_start_warm():
    from deploy_runs.prefect_compat.warm_worker import preloaded_entrypoint

    assert preloaded_entrypoint("flows.deploy.deploy_app")
    assert preloaded_entrypoint("flows.deploy:deploy_app")
    assert not preloaded_entrypoint("flows/deploy.py:deploy_app")  # loaded from a workspace
    assert not preloaded_entrypoint("other_package.flows.main")
    assert not preloaded_entrypoint(None)


def test_job_env_read_only_at_interpreter_start_sends_the_run_the_stock_way():
    from deploy_runs.prefect_compat.warm_worker import _read_at_start

    assert _read_at_start("PYTHONPATH") and _read_at_start("LD_PRELOAD") and _read_at_start("TZ")
    assert not _read_at_start("PREFECT_API_URL") and not _read_at_start("APP_MODE")


def test_the_job_remembers_its_deployment_entrypoint_and_warm_start_follows_it():
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

    from deploy_runs.prefect_compat.warm_worker import WarmJobConfiguration

    def job(entrypoint: str, env: dict[str, str] | None = None) -> WarmJobConfiguration:
        configuration = WarmJobConfiguration(env=env or {})
        deployment = DeploymentResponse(name="d", flow_id=uuid4(), entrypoint=entrypoint)
        configuration.prepare_for_flow_run(FlowRun(flow_id=deployment.flow_id), deployment)
        return configuration

    assert WarmProcessWorker.warm_start_applies(job("flows.deploy.deploy_app"))
    assert not WarmProcessWorker.warm_start_applies(job("flows/deploy.py:deploy_app"))
    assert not WarmProcessWorker.warm_start_applies(
        job("flows.deploy.deploy_app", {"PYTHONPATH": "/elsewhere"}))
