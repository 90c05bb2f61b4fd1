"""Start application: replace each service's container with one running the new image,
with its ports, environment and secrets (secrets go through a 0600 env file, never a command
line or a log)."""

from __future__ import annotations

from deploy_runs import commands as c
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import step

NAME = "Start application"
TIMEOUT = 120.0


def env_file_content(values: dict[str, str]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in values.items()).encode()


@step(NAME)
def start_application(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    host = ctx.host()
    app, layout = ctx.app, ctx.layout
    started: dict[str, str] = {}
    for service in app.services:
        secrets = app.secrets_for(service.name)
        env_file = None
        if secrets:
            env_file = layout.env_file(service.name)
            host.write_file(env_file, env_file_content(secrets), mode=0o600)
            log.info("wrote %d secret variable(s) (%s) to %s, mode 0600",
                     len(secrets), ", ".join(sorted(secrets)), env_file)
        name = c.container_name(app.name, service.name)
        host.run(c.docker_remove_container(name), log, timeout=TIMEOUT, check=False)
        run = c.docker_run(
            name, ctx.images[service.name],
            ports=[(service.host_port, service.container_port)],
            env=service.env, env_file=env_file,
            label_values=c.labels(app=app.name, service=service.name,
                                  commit=ctx.commit or "", run=str(ctx.run_id)),
        )
        host.run(run, log, timeout=TIMEOUT)
        started[service.name] = name
    return started
