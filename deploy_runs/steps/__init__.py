"""The pipeline steps, one module each, each a Prefect task named as the product shows it."""

from deploy_runs.steps.build import build_images
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.fetch import fetch_source
from deploy_runs.steps.health import health_check
from deploy_runs.steps.provision import provision_server
from deploy_runs.steps.start import start_application
from deploy_runs.steps.step import StepSpec

PIPELINE = (provision_server, fetch_source, build_images, start_application, health_check)
# each step's declaration (steps/step.py StepSpec), in order: all else about steps derives
STEPS: tuple[StepSpec, ...] = tuple(step.spec for step in PIPELINE)
PLANNED_STEPS: tuple[str, ...] = tuple(spec.name for spec in STEPS)


def spec_of(name: str) -> StepSpec | None:
    """The declaration of the step named `name` (None: not a step of the pipeline)."""
    return next((spec for spec in STEPS if spec.name == name), None)

__all__ = [
    "PIPELINE",
    "PLANNED_STEPS",
    "STEPS",
    "DeployContext",
    "StepSpec",
    "build_images",
    "fetch_source",
    "health_check",
    "provision_server",
    "spec_of",
    "start_application",
]
