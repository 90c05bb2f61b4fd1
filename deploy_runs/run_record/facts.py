"""Where each fact about a run is kept in Prefect, and how it is written there (pure): the tags
runs are listed by, the `deploy-runs.*` labels, the failure's flow-run input key and the
failure index's log records. docs/architecture.md's table lists them all."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from deploy_runs.models import Failure, ServiceRelease

LABEL = "deploy-runs"
RUN_TAG = "deploy-runs"
FAILURE_KEY = "deploy-runs-failure"
# a Completed run's runtime configuration (its services, no secret), for a rollback to it
RELEASE_KEY = "deploy-runs-release"
# One log record per failed run, at a level of its own (between ERROR and CRITICAL) under this
# logger name: the index `recurring_failures` reads (light log rows that the server filters by
# its indexed level and time, instead of every failed flow run in full).
FAILURE_LOGGER = "deploy_runs.failure"
FAILURE_LEVEL = 45

if TYPE_CHECKING:
    from blocks import Application


def app_tag(app: str) -> str:
    return f"app:{app}"


TRIGGER_PREFIX = "trigger:"


def trigger_tag(trigger: str) -> str:
    return f"{TRIGGER_PREFIX}{trigger}"


def config_snapshot(app: Application) -> dict:
    """What `compare` needs of the app's configuration, without any secret value: env values
    as short hashes (to tell changed from unchanged), secret variables by name only."""
    import hashlib

    def digest(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()[:12]

    return {s.name: {
        "ports": f"{s.host_port}:{s.container_port}",
        "env": {k: digest(v) for k, v in s.env.items()},
        "secrets": sorted(app.secrets_for(s.name)),
        "health": s.health_check.model_dump(mode="json"),
        "build": {"context": s.context, "dockerfile": s.dockerfile,
                  "build_args": {k: digest(v) for k, v in s.build_args.items()}},
        "memory": s.memory,
    } for s in app.services}


def fact_label(name: str) -> str:
    return f"{LABEL}.{name}"


def services_from_labels(labels: dict) -> list[ServiceRelease]:
    value = labels.get(fact_label("services"))
    if not value:
        return []
    return [ServiceRelease.model_validate(item) for item in json.loads(str(value))]


def failure_index_line(app: str, failure: Failure) -> str:
    return "failure signature " + json.dumps({
        "app": app, "signature": failure.signature,
        "message": failure.message.splitlines()[0][:300] if failure.message else ""})


def parse_failure_index_line(message: str) -> dict | None:
    try:
        value = json.loads(message.removeprefix("failure signature "))
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("signature") else None
