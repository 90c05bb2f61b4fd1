"""Start application: replace the containers whose image or runtime configuration changed;
leave the others running untouched.

A container carries a hash of its runtime configuration (image, ports, environment, secrets,
restart policy) as a label; equal hash and running means nothing to do. A replaced container
keeps serving until its successor is about to start: it is renamed to NAME-previous and
stopped just before the new one starts (their ports are the same). If the new one cannot
start, the previous one is put back and started again. Secrets go through a 0600 env file,
never a command line or a log.
"""

from __future__ import annotations

import hashlib
import json

from blocks import Service
from deploy_runs import commands as c
from deploy_runs.diagnosis import cause_line
from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.models import ServiceRelease
from deploy_runs.remote import CollectingSink
from deploy_runs.run_record.writer import RunRecorder
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import StepSpec, step

NAME = "Start application"
SPEC = StepSpec(
    NAME, limit="start",
    inputs=lambda app, commit: [
        {**s.model_dump(include={"name", "container_port", "host_port", "env", "memory"}),
         "secrets": app.secrets_digest(s.name)}  # keyed: no guesses
        for s in app.services])
RESTART_POLICY = "unless-stopped"


def env_file_content(values: dict[str, str]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in values.items()).encode()


def runtime_config_hash(image: str, service: Service, secrets_digest: str) -> str:
    """The container's `deploy-runs.config` label. Secret values enter only through their
    keyed digest (`Application.secrets_digest`): the label (shown by `docker ps`, and in the
    step's log) cannot be used to test guesses of a secret."""
    config = {"image": image, "ports": [[service.host_port, service.container_port]],
              "env": dict(sorted(service.env.items())), "secrets": secrets_digest,
              "restart": RESTART_POLICY, "memory": service.memory,
              "hardening": [service.no_new_privileges, service.pids_limit,
                            service.log_rotation.model_dump() if service.log_rotation else None]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def current_containers(ctx: DeployContext, log: StepLog) -> dict[str, tuple[str, str]]:
    """Container name -> (runtime config hash, state) for the app's containers."""
    sink = CollectingSink(log)
    ctx.host().run(c.docker_app_containers(ctx.app.name), sink)
    found = {}
    for line in sink.stdout().splitlines():
        name, config, _commit, state, _id = (line.split("\t") + [""] * 5)[:5]
        found[name] = (config, state)
    return found


def port_holder(ctx: DeployContext, service: Service, exc: CommandFailed,
                log: StepLog) -> str | None:
    """When the port is taken: which container publishes it, if one does (evidence)."""
    if not any("already allocated" in line or "address already in use" in line
               for line in exc.output_tail):
        return None
    sink = CollectingSink(log)
    ctx.host().run(c.docker_publishers(service.host_port), sink, check=False)
    names = [n for n in sink.stdout().split() if n]
    return (f"port {service.host_port} is published by container(s): {', '.join(names)}"
            if names else f"port {service.host_port} is not published by any container: "
                          "another process on the server listens on it")


@step(SPEC)
def start_application(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    running = current_containers(ctx, log)
    outcome: dict[str, str] = {}
    try:
        _start_services(ctx, log, running, outcome)
    finally:
        RunRecorder(ctx.run_id).services(ctx.merged_releases())
    if any(o == "replaced" for o in outcome.values()):
        # secrets of services that are gone, or have none any more, do not stay on the server
        keep = [f"{s.name}.env" for s in ctx.app.services if ctx.app.secrets_for(s.name)]
        ctx.host().run(c.remove_env_files(ctx.layout.secrets_dir, keep), log)
    return outcome


def _start_services(ctx: DeployContext, log: StepLog, running: dict[str, tuple[str, str]],
                    outcome: dict[str, str]) -> None:
    host, app, layout = ctx.host(), ctx.app, ctx.layout
    for service in app.services:
        name = c.container_name(app.name, service.name)
        image = ctx.images[service.name]
        secrets = app.secrets_for(service.name)
        config = runtime_config_hash(image, service, app.secrets_digest(service.name))
        release = ctx.releases.get(service.name) or ServiceRelease(
            name=service.name, image=image, build="reused", build_reason="unchanged")
        current = running.get(name)
        if current == (config, "running"):
            log.info("%s: image and configuration unchanged; container %s keeps running",
                     service.name, name)
            ctx.releases[service.name] = release.model_copy(
                update={"container": "kept", "container_reason": "unchanged"})
            outcome[service.name] = "kept"
            continue
        reason = ("new service" if current is None else
                  "not running" if current[1] != "running" else
                  "new image" if release.build == "rebuilt" else "configuration changed")

        env_file = None
        if secrets:
            env_file = layout.env_file(service.name)
            host.write_file(env_file, env_file_content(secrets), mode=0o600)
            log.info("wrote %d secret variable(s) (%s) to %s, mode 0600",
                     len(secrets), ", ".join(sorted(secrets)), env_file)
        previous = c.previous_name(name)
        if current is not None:
            # A NAME-previous is there if an earlier run's release failed (kept for rolling
            # back by hand), or if something else took the name: it goes first.
            renamed = previous not in running and host.run(
                c.docker_rename(name, previous), log, check=False).exit_code == 0
            if not renamed:
                host.run(c.docker_remove_container(previous), log, check=False)
                host.run(c.docker_rename(name, previous), log)
            host.run(c.docker_stop(previous), log)
        run = c.docker_run(
            name, image,
            ports=[(service.host_port, service.container_port)],
            env=service.env, env_file=env_file, restart=RESTART_POLICY, memory=service.memory,
            no_new_privileges=service.no_new_privileges, pids_limit=service.pids_limit,
            log_rotation=((service.log_rotation.max_size, service.log_rotation.max_files)
                          if service.log_rotation else None),
            label_values=c.labels(app=app.name, service=service.name, commit=ctx.commit or "",
                                  run=str(ctx.run_id), config=config),
        )
        try:
            host.run(run, log)
        except CommandFailed as exc:
            # `docker run` may leave the container created but not started: remove it
            host.run(c.docker_remove_container(name), log, check=False)
            held = port_holder(ctx, service, exc, log)
            if current is None:
                if held:
                    exc.output_tail.append(held)
                raise
            host.run(c.docker_rename(previous, name), log)
            host.run(c.docker_start(name), log)
            cause = cause_line(exc.output_tail, NAME) or f"exit code {exc.exit_code}"
            raise StepFailed(
                f"{service.name}: the new container could not start ({cause}); "
                f"the previous container was put back and is running again as {name}",
                evidence=exc.output_tail + ([held] if held else [])) from None
        ctx.releases[service.name] = release.model_copy(
            update={"container": "replaced", "container_reason": reason})
        outcome[service.name] = "replaced"
