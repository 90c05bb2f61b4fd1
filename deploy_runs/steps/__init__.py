"""The pipeline steps, one module each, each a Prefect task named as the product shows it."""

from deploy_runs.steps.build import build_images
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.fetch import fetch_source
from deploy_runs.steps.health import health_check
from deploy_runs.steps.provision import provision_server
from deploy_runs.steps.start import start_application

PIPELINE = (provision_server, fetch_source, build_images, start_application, health_check)
PLANNED_STEPS: tuple[str, ...] = tuple(step.name for step in PIPELINE)

__all__ = [
    "PIPELINE",
    "PLANNED_STEPS",
    "DeployContext",
    "build_images",
    "fetch_source",
    "health_check",
    "provision_server",
    "start_application",
]
