"""deploy-runs: deploy applications over SSH and Docker; every deploy is a Prefect run.

Names are imported on first use, so that light parts (the sandbox, the CLI's --help) do not pay
for importing Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncDeployRuns": "deploy_runs.client",
    "DeployRuns": "deploy_runs.client",
    "APIUnavailable": "deploy_runs.errors",
    "AppBusy": "deploy_runs.errors",
    "AppNotFound": "deploy_runs.errors",
    "CommandFailed": "deploy_runs.errors",
    "ConfigError": "deploy_runs.errors",
    "ConnectionFailed": "deploy_runs.errors",
    "DeployRunsError": "deploy_runs.errors",
    "HostKeyError": "deploy_runs.errors",
    "InvalidControl": "deploy_runs.errors",
    "NoWorker": "deploy_runs.errors",
    "RunNotFound": "deploy_runs.errors",
    "WaitTimeout": "deploy_runs.errors",
    "LogLine": "deploy_runs.logs",
    "Notification": "deploy_runs.notify",
    "diagnose": "deploy_runs.diagnosis",
    "register_suggester": "deploy_runs.diagnosis",
    "Failure": "deploy_runs.models",
    "Suggestion": "deploy_runs.models",
    "Run": "deploy_runs.models",
    "Step": "deploy_runs.models",
    "RunStatus": "deploy_runs.status",
    "StepStatus": "deploy_runs.status",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deploy_runs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
