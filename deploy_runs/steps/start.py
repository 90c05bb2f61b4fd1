"""Start application: replace the containers whose image or runtime configuration changed;
leave the others running untouched.

A container carries a hash of its runtime configuration (image, ports, environment, secrets,
restart policy, proxied or not) as a label; equal hash and running means nothing to do.

An HTTP service of an app with `proxy` on is served by the server's reverse proxy
(deploy_runs/proxy.py): its new container starts beside the old one, published on a loopback
port only, and is probed there until healthy; then the proxy is switched to it, the old
container is given `drain_seconds` to finish its requests, and is stopped (kept as
NAME-previous until the Health check step passes). A new container that never becomes healthy
is removed and never takes traffic: the old one keeps serving.

Any other service publishes its host_port itself: the replaced container keeps serving until
its successor is about to start (renamed to NAME-previous and stopped just before, as their
ports are the same). If the new one cannot start, the previous one is put back and started
again. Secrets go through a 0600 env file, never a command line or a log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import NoReturn

from blocks import Service
from deploy_runs import commands as c
from deploy_runs import proxy
from deploy_runs.diagnosis import cause_line
from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.models import ServiceRelease
from deploy_runs.remote import CollectingSink
from deploy_runs.run_record.writer import RunRecorder
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.parallel import side_by_side
from deploy_runs.steps.step import StepSpec, step
from deploy_runs.steps.switch import ProxyRoutes, next_name, proxied

NAME = "Start application"
SPEC = StepSpec(
    NAME, limit="start",
    inputs=lambda app, commit: [
        {**s.model_dump(include={"name", "container_port", "host_port", "env", "memory"}),
         "secrets": app.secrets_digest(s.name)}  # keyed: no guesses
        for s in app.services] + _proxy_inputs(app))


def _proxy_inputs(app) -> list:
    """Whether each service is served through the proxy (only when some is: the inputs of
    apps without it stay as they were)."""
    behind = [s.name for s in app.services if app.proxy and s.health_check.type == "http"]
    return [{"proxy": behind}] if behind else []
RESTART_POLICY = "unless-stopped"


def env_file_content(values: dict[str, str]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in values.items()).encode()


def runtime_config_hash(image: str, service: Service, secrets_digest: str,
                        proxied: bool = False) -> str:
    """The container's `deploy-runs.config` label. Secret values enter only through their
    keyed digest (`Application.secrets_digest`): the label (shown by `docker ps`, and in the
    step's log) cannot be used to test guesses of a secret. A proxied container's loopback
    port is not part of it (it changes with every new container)."""
    ports: list = [service.host_port, service.container_port] + (["proxy"] if proxied else [])
    config = {"image": image, "ports": [ports],
              "env": dict(sorted(service.env.items())), "secrets": secrets_digest,
              "restart": RESTART_POLICY, "memory": service.memory,
              "hardening": [service.no_new_privileges, service.pids_limit,
                            service.log_rotation.model_dump() if service.log_rotation else None]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Current:
    """One of the app's containers on the server, as `docker ps` lists it."""

    config: str
    state: str
    ports: str = ""

    def loopback_port(self, container_port: int) -> int | None:
        return proxy.loopback_of(self.ports, container_port)

    @property
    def behind_proxy(self) -> bool:
        """Published on loopback only (for the proxy), whatever its container port."""
        found = proxy.published(self.ports)
        return bool(found) and all(addr == "127.0.0.1" for addr, _, _ in found)


def current_containers(ctx: DeployContext, log: StepLog) -> dict[str, Current]:
    """Container name -> its runtime config hash, state and published ports."""
    sink = CollectingSink(log)
    ctx.host().run(c.docker_app_containers(ctx.app.name), sink)
    found = {}
    for line in sink.stdout().splitlines():
        name, config, _commit, state, _id, ports = (line.split("\t") + [""] * 6)[:6]
        found[name] = Current(config, state, ports)
    return found


def port_holder(ctx: DeployContext, service: Service, exc: CommandFailed,
                log: StepLog) -> str | None:
    """When the port is taken: which container publishes it, if one does (evidence)."""
    if not _taken(exc):
        return None
    names = _publishers(ctx, service.host_port, log)
    return (f"port {service.host_port} is published by container(s): {', '.join(names)}"
            if names else f"port {service.host_port} is not published by any container: "
                          "another process on the server listens on it")


@step(SPEC)
def start_application(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    running = current_containers(ctx, log)
    outcome: dict[str, str] = {}
    try:
        routes = ProxyRoutes(ctx, log)
        _finish_interrupted_switches(ctx, log, running, routes)
        _start_services(ctx, log, running, outcome, routes)
    finally:
        RunRecorder(ctx.run_id).services(ctx.merged_releases())
    if any(o == "replaced" for o in outcome.values()):
        # secrets of services that are gone, or have none any more, do not stay on the server
        keep = [f"{s.name}.env" for s in ctx.app.services if ctx.app.secrets_for(s.name)]
        ctx.host().run(c.remove_env_files(ctx.layout.secrets_dir, keep), log)
    return {s.name: outcome[s.name] for s in ctx.app.services if s.name in outcome}


def _start_services(ctx: DeployContext, log: StepLog, running: dict[str, Current],
                    outcome: dict[str, str], routes: ProxyRoutes) -> None:
    """Each service's container, the services side by side (none depends on another)."""
    services = ctx.app.services
    if len(services) == 1:
        _start_service(ctx, log, services[0], running, outcome, routes)
        return
    side_by_side(services, len(services), lambda service, own, _cancel: _start_service(
        ctx, own, service, running, outcome, routes), lambda service: service.name)


def _start_service(ctx: DeployContext, log: StepLog, service: Service,
                   running: dict[str, Current], outcome: dict[str, str],
                   routes: ProxyRoutes) -> None:
    host, app, layout = ctx.host(), ctx.app, ctx.layout
    name = c.container_name(app.name, service.name)
    image = ctx.images[service.name]
    secrets = app.secrets_for(service.name)
    behind_proxy = proxied(ctx, service)
    config = runtime_config_hash(image, service, app.secrets_digest(service.name),
                                 behind_proxy)
    release = ctx.releases.get(service.name) or ServiceRelease(
        name=service.name, image=image, build="reused", build_reason="unchanged")
    release = release.model_copy(update={"port": "proxy" if behind_proxy else "direct"})
    current = running.get(name)
    if next_name(name) in running:
        # an earlier run's new container that never took traffic (its health check failed,
        # or the run stopped before the switch; one that serves was named NAME already)
        host.run(c.docker_remove_container(next_name(name)), log, check=False)
        running.pop(next_name(name))
    if current is not None and (current.config, current.state) == (config, "running"):
        log.info("%s: image and configuration unchanged; container %s keeps running",
                 service.name, name)
        ctx.releases[service.name] = release.model_copy(
            update={"container": "kept", "container_reason": "unchanged"})
        outcome[service.name] = "kept"
        return
    reason = ("new service" if current is None else
              "not running" if current.state != "running" else
              "new image" if release.build == "rebuilt" else "configuration changed")

    env_file = None
    if secrets:
        env_file = layout.env_file(service.name)
        host.write_file(env_file, env_file_content(secrets), mode=0o600)
        log.info("wrote %d secret variable(s) (%s) to %s, mode 0600",
                 len(secrets), ", ".join(sorted(secrets)), env_file)
    labels = c.labels(app=app.name, service=service.name, commit=ctx.commit or "",
                      run=str(ctx.run_id), config=config)
    if behind_proxy:
        _start_beside(ctx, log, service, image, env_file, labels, current, running, routes)
        ctx.releases[service.name] = release.model_copy(
            update={"container": "replaced", "container_reason": reason})
        outcome[service.name] = "replaced"
        return
    released = None
    if current is None or current.behind_proxy:
        released = routes.release(service.host_port)  # the service was proxied before
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
    run = container_run(name, image, service, (service.host_port, service.container_port),
                        env_file, labels)
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
        if released:  # the previous container served through the proxy: so it does again
            routes.apply({**routes.applied(), **released})
        _put_back(ctx, log, service, exc, [held] if held else [])
    ctx.releases[service.name] = release.model_copy(
        update={"container": "replaced", "container_reason": reason})
    outcome[service.name] = "replaced"


def container_run(name: str, image: str, service: Service, port: tuple[int | str, int],
                  env_file: str | None, labels: dict[str, str]) -> c.Command:
    return c.docker_run(
        name, image, ports=[port],
        env=service.env, env_file=env_file, restart=RESTART_POLICY, memory=service.memory,
        no_new_privileges=service.no_new_privileges, pids_limit=service.pids_limit,
        log_rotation=((service.log_rotation.max_size, service.log_rotation.max_files)
                      if service.log_rotation else None),
        label_values=labels)


def _publishers(ctx: DeployContext, port: int, log: StepLog) -> list[str]:
    """The running containers that publish `port` on the server."""
    sink = CollectingSink(log)
    ctx.host().run(c.docker_publishers(port), sink, check=False)
    return [n for n in sink.stdout().split() if n]


def _taken(exc: CommandFailed) -> bool:
    return any("already allocated" in line or "address already in use" in line
               for line in exc.output_tail)


def _finish_interrupted_switches(ctx: DeployContext, log: StepLog, running: dict[str, Current],
                                 routes: ProxyRoutes) -> None:
    """A run stopped (or lost) between the switch and the end of its Health check leaves the
    proxy serving NAME-next while the old NAME still runs: the old one goes and the new one
    takes its name, before anything else (otherwise NAME-next, serving, would be taken for a
    leftover)."""
    if not any(next_name(n) in running for n in running):
        return
    applied = routes.applied()
    serving = set(applied.values())
    finished = False
    for service in ctx.app.services:
        name = c.container_name(ctx.app.name, service.name)
        new = running.get(next_name(name))
        if new is None or new.state != "running" or \
                new.loopback_port(service.container_port) not in serving:
            continue
        log.info("%s: an earlier run switched the proxy to %s and ended before it was named "
                 "%s: finishing that switch", service.name, next_name(name), name)
        if not finished:
            # the earlier run may have ended before nginx took the file: it does now, or this
            # step fails with the old container untouched
            routes.apply(applied)
            finished = True
        host = ctx.host()
        if name in running:
            host.run(c.docker_stop(name), log, check=False)
            host.run(c.docker_remove_container(name), log, check=False)
        host.run(c.docker_rename(next_name(name), name), log)
        running[name] = running.pop(next_name(name))


def _start_beside(ctx: DeployContext, log: StepLog, service: Service, image: str,
                  env_file: str | None, labels: dict[str, str], current: Current | None,
                  running: dict[str, Current], routes: ProxyRoutes) -> None:
    """A proxied service's new container: beside the running one as NAME-next, on a loopback
    port, taking no traffic until the Health check step switches the proxy to it. When no
    container of the service serves through the proxy yet (a new service, a stopped one, or
    one that publishes its port itself), the new one is NAME at once."""
    host = ctx.host()
    name = c.container_name(ctx.app.name, service.name)
    previous = c.previous_name(name)
    if current is not None and current.state == "running" and current.behind_proxy:
        target = next_name(name)
        try:
            _run_on_loopback(ctx, log, target, image, service, env_file, labels)
        except CommandFailed as exc:
            cause = cause_line(exc.output_tail, NAME) or f"exit code {exc.exit_code}"
            raise StepFailed(f"{service.name}: the new container could not start ({cause}); "
                             f"{name} keeps serving", evidence=exc.output_tail) from None
        return
    if current is not None:
        if current.state == "running":
            log.info("%s: %s publishes port %d itself; it stops before the proxy can serve "
                     "that port (a gap, this once)", service.name, name, service.host_port)
        if previous in running:
            host.run(c.docker_remove_container(previous), log, check=False)
        host.run(c.docker_rename(name, previous), log)
        host.run(c.docker_stop(previous), log)
    held = None if service.host_port in routes.applied() else public_port_holder(ctx, service,
                                                                                 log)
    if held:
        if current is not None:
            host.run(c.docker_rename(previous, name), log)
            if current.state == "running":
                host.run(c.docker_start(name), log)
        raise StepFailed(f"{service.name}: port {service.host_port} on the server is already "
                         f"in use by {held}: the proxy cannot serve it; nothing was started",
                         evidence=[f"port {service.host_port}: {held}"])
    try:
        _run_on_loopback(ctx, log, name, image, service, env_file, labels)
    except CommandFailed as exc:
        if current is None:
            raise
        _put_back(ctx, log, service, exc)


def _put_back(ctx: DeployContext, log: StepLog, service: Service, exc: CommandFailed,
              more: list[str] | None = None) -> NoReturn:
    """The new container could not start: the previous one (stopped as NAME-previous) is put
    back and started again; the step fails saying so."""
    host = ctx.host()
    name = c.container_name(ctx.app.name, service.name)
    host.run(c.docker_rename(c.previous_name(name), name), log)
    host.run(c.docker_start(name), log)
    cause = cause_line(exc.output_tail, NAME) or f"exit code {exc.exit_code}"
    raise StepFailed(
        f"{service.name}: the new container could not start ({cause}); "
        f"the previous container was put back and is running again as {name}",
        evidence=exc.output_tail + (more or [])) from None


PORT_ATTEMPTS = 5


def public_port_holder(ctx: DeployContext, service: Service, log: StepLog) -> str | None:
    """Before the proxy first serves `service.host_port`: who holds that port on the server
    (something accepts connections there), or None when it is free."""
    host = ctx.host()
    try:
        host.open_tcp("127.0.0.1", service.host_port, timeout=2.0).close()
    except Exception:  # refused (free), or no answer: nginx will say if it cannot bind
        return None
    names = _publishers(ctx, service.host_port, log)
    return (f"container(s) {', '.join(names)}" if names
            else "another process (not a container)")


def _run_on_loopback(ctx: DeployContext, log: StepLog, target: str, image: str,
                     service: Service, env_file: str | None, labels: dict[str, str]) -> int:
    """`docker run` publishing the service's port on a free loopback port only; the port."""
    host = ctx.host()
    for attempt in range(PORT_ATTEMPTS):
        port = proxy.loopback_port(ctx.app.name, service.name, str(ctx.run_id), attempt)
        try:
            host.run(container_run(target, image, service,
                                   (f"127.0.0.1:{port}", service.container_port),
                                   env_file, labels), log)
            return port
        except CommandFailed as exc:
            # `docker run` may leave the container created but not started: remove it
            host.run(c.docker_remove_container(target), log, check=False)
            if not _taken(exc) or attempt == PORT_ATTEMPTS - 1:
                raise
            log.info("loopback port %d is taken; trying another", port)
    raise AssertionError("unreachable")
