"""Build images: build each service's image on the server's Docker engine (its layer cache
makes unchanged layers free)."""

from __future__ import annotations

from deploy_runs import commands as c
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import step

NAME = "Build images"
TIMEOUT = 1800.0


@step(NAME)
def build_images(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    host = ctx.host()
    app, layout = ctx.app, ctx.layout
    assert ctx.commit, "Fetch source runs before Build images"
    for service in app.services:
        tag = c.image_tag(app.name, service.name, ctx.commit)
        # Only stable labels: a per-run label would make every build a new image.
        label_values = c.labels(app=app.name, service=service.name)
        host.run(c.docker_build(tag, layout.in_repo(service.dockerfile),
                                layout.in_repo(service.context), label_values),
                 log, timeout=TIMEOUT)
        ctx.images[service.name] = tag
    return dict(ctx.images)
