"""deploy-runs: deploy applications over SSH and Docker; every deploy is a Prefect run."""

from deploy_runs.client import AsyncDeployRuns, DeployRuns
from deploy_runs.errors import (
    AppNotFound,
    CommandFailed,
    ConfigError,
    ConnectionFailed,
    DeployRunsError,
    HostKeyError,
    InvalidControl,
    RunNotFound,
    WaitTimeout,
)
from deploy_runs.models import Failure, Run, Step
from deploy_runs.status import RunStatus, StepStatus

__all__ = [
    "AppNotFound",
    "AsyncDeployRuns",
    "CommandFailed",
    "ConfigError",
    "ConnectionFailed",
    "DeployRuns",
    "DeployRunsError",
    "Failure",
    "HostKeyError",
    "InvalidControl",
    "Run",
    "RunNotFound",
    "RunStatus",
    "Step",
    "StepStatus",
    "WaitTimeout",
]
