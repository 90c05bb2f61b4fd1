"""Health check: probe every service from the server (HTTP GET or TCP connect through an SSH
channel, so the server needs no probe tool) until healthy or its timeout. On failure the
evidence (probe answers, container state and last log lines, port bindings) is captured
before anything else happens, and put in the step's log and error."""

from __future__ import annotations

import time

import paramiko

from blocks import Service
from deploy_runs import commands as c
from deploy_runs import proxy
from deploy_runs.errors import StepFailed
from deploy_runs.remote import Cancel, Cancelled, CollectingSink, RemoteHost
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.parallel import side_by_side
from deploy_runs.steps.start import current_containers
from deploy_runs.steps.step import StepSpec, step
from deploy_runs.steps.switch import ProxyRoutes, next_name, proxied

NAME = "Health check"
SPEC = StepSpec(NAME, limit="health",
                inputs=lambda app, commit: [s.health_check.model_dump() for s in app.services])
PROBE_TIMEOUT = 5.0


def probe(host: RemoteHost, service: Service, limit: float = PROBE_TIMEOUT,
          port: int | None = None) -> tuple[bool, str]:
    """One probe of a service's published port on the server (or of `port`: a new container's
    loopback port, before the proxy sends it traffic); (healthy, what it answered).
    The whole probe takes at most `limit` seconds (at most PROBE_TIMEOUT), however slowly
    the service answers: a status line sent a byte a second does not hold it."""
    check = service.health_check
    port = port or service.host_port
    limit = max(0.05, min(limit, PROBE_TIMEOUT))
    deadline = time.monotonic() + limit
    try:
        channel = host.open_tcp("127.0.0.1", port, timeout=limit)
    except paramiko.ChannelException as exc:
        return False, f"tcp 127.0.0.1:{port}: {exc.text or 'connect failed'}"
    except (paramiko.SSHException, OSError, EOFError) as exc:
        return False, f"tcp 127.0.0.1:{port}: {exc}"
    try:
        if check.type == "tcp":
            return True, f"tcp 127.0.0.1:{port}: connected"
        url = f"http://127.0.0.1:{port}{check.path}"
        channel.settimeout(max(0.05, deadline - time.monotonic()))
        request = (f"GET {check.path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
                   "User-Agent: deploy-runs-health-check\r\nConnection: close\r\n\r\n")
        channel.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer and len(answer) < 4096:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, (f"{url}: no complete status line within {limit:g}s "
                               f"(got {answer[:80]!r})")
            channel.settimeout(left)
            chunk = channel.recv(4096)
            if not chunk:
                break
            answer += chunk
        if not answer:
            return False, f"{url}: connection closed without an answer"
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return False, f"{url}: not an HTTP answer: {status_line[:80]!r}"
        status = int(parts[1])
        return status == check.expected_status, f"{url}: {status_line}"
    except (TimeoutError, OSError, paramiko.SSHException) as exc:
        return False, f"http://127.0.0.1:{port}{check.path}: {exc or 'timed out'}"
    finally:
        channel.close()


def wait_healthy(ctx: DeployContext, host: RemoteHost, service: Service,
                 log: StepLog, port: int | None = None,
                 cancel: Cancel | None = None) -> tuple[bool, list[str]]:
    check = service.health_check
    deadline = time.monotonic() + check.timeout
    answers: list[str] = []
    last, repeats = None, 0
    while True:
        ctx.check_stopped()
        ctx.check_deadline()
        if cancel is not None and cancel.reason:
            raise Cancelled(cancel.reason)
        healthy, answer = probe(host, service, min(ctx.seconds_left(),
                                                   deadline - time.monotonic() + PROBE_TIMEOUT),
                                port=port)
        if answer != last:
            log.info("probe %s: %s", service.name, answer)
            answers.append(answer)
            last, repeats = answer, 0
        else:
            repeats += 1
        if healthy:
            return True, answers
        if time.monotonic() + check.interval > deadline:
            if repeats:
                answers.append(f"(the same answer {repeats} more time(s))")
            return False, answers
        time.sleep(check.interval)


def evidence(host: RemoteHost, ctx: DeployContext, service: Service,
             log: StepLog, name: str | None = None) -> tuple[list[str], str]:
    """The container's (or container `name`'s) state, port bindings and last log lines; and its
    state in words."""
    name = name or c.container_name(ctx.app.name, service.name)
    lines: list[str] = []
    state = ""
    for command in (c.docker_container_state(name), c.docker_port(name),
                    c.docker_container_logs(name, tail=30)):
        sink = CollectingSink(log)
        result = host.run(command, sink, check=False)
        lines.append(f"$ {result.command}")
        lines += [text for _, text in sink.lines]
        state = state or sink.stdout().strip()
    return lines, describe_state(name, state)


def describe_state(name: str, state: str) -> str:
    """'container X is running' / 'is restarting (last exit code 137, OOM-killed, 5
    restarts)' from the `docker inspect` state line."""
    fields = dict(part.split("=", 1) for part in state.split() if "=" in part)
    status = fields.get("status")
    if not status:
        return f"container {name}: state unknown"
    notes = []
    if fields.get("exit_code", "0") != "0" or status in ("exited", "dead"):
        notes.append(f"last exit code {fields.get('exit_code', '?')}")
    if fields.get("oom_killed") == "true":
        notes.append("OOM-killed")
    if fields.get("restarts", "0") != "0":
        notes.append(f"{fields['restarts']} restarts")
    return f"container {name} is {status}" + (f" ({', '.join(notes)})" if notes else "")


@step(SPEC)
def health_check(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    host = ctx.host()
    targets = _targets(ctx, log)
    healthy: dict[str, str] = {}

    def check(service: Service, log: StepLog, cancel: Cancel | None = None) -> None:
        target, port = targets[service.name]
        ok, answers = wait_healthy(ctx, host, service, log, port=port, cancel=cancel)
        if not ok:
            found, state = evidence(host, ctx, service, log, name=target)
            name = c.container_name(ctx.app.name, service.name)
            release = ctx.releases.get(service.name)
            if target != name:
                host.run(c.docker_stop(target), log, check=False)
                state += (f"; it never took traffic: {name} keeps serving, and {target} is "
                          "kept, stopped (a retry of this step probes it again)")
            elif release and release.container == "replaced" and \
                    release.container_reason != "new service":
                state += (f"; the previous container is stopped and kept as "
                          f"{c.previous_name(name)} (start it to roll back)")
            last = next((a for a in reversed(answers) if not a.startswith("(")), "-")
            raise StepFailed(
                f"service {service.name} did not become healthy within "
                f"{service.health_check.timeout:g}s (last probe: {last}); {state}",
                evidence=answers + found,
            )
        healthy[service.name] = answers[-1]

    if len(ctx.app.services) == 1:
        check(ctx.app.services[0], log)
    else:  # every service is probed at the same time
        side_by_side(ctx.app.services, len(ctx.app.services), check, lambda s: s.name)
    healthy = {s.name: healthy[s.name] for s in ctx.app.services}  # in the app's order
    if any(proxied(ctx, s) for s in ctx.app.services):
        _switch(ctx, log, targets)
    # Every service is healthy: the release is complete, the previous containers can go.
    for service in ctx.app.services:
        release = ctx.releases.get(service.name)
        if release and release.container == "replaced" and \
                release.container_reason != "new service":
            previous = c.previous_name(c.container_name(ctx.app.name, service.name))
            host.run(c.docker_remove_container(previous), log, check=False)
    return healthy


def _targets(ctx: DeployContext, log: StepLog) -> dict[str, tuple[str, int | None]]:
    """Per service, the container to probe and its loopback port (None: the public port).
    A proxied service's new container is NAME-next when it runs beside the old one; one kept
    stopped by a failed probe is started again (a retry of this step)."""
    names = {s.name: c.container_name(ctx.app.name, s.name) for s in ctx.app.services}
    if not any(proxied(ctx, s) for s in ctx.app.services):
        return {service: (name, None) for service, name in names.items()}
    running = current_containers(ctx, log)
    stopped = [next_name(n) for n in names.values()
               if next_name(n) in running and running[next_name(n)].state != "running"]
    if stopped:
        for name in stopped:
            ctx.host().run(c.docker_start(name), log)
        running = current_containers(ctx, log)  # a stopped container lists no ports
    targets: dict[str, tuple[str, int | None]] = {}
    for service in ctx.app.services:
        name = names[service.name]
        if not proxied(ctx, service):
            targets[service.name] = (name, None)
            continue
        target = next_name(name) if next_name(name) in running else name
        found = running.get(target)
        port = found.loopback_port(service.container_port) if found else None
        if port is None:
            raise StepFailed(
                f"service {service.name}: container {target} "
                + ("is missing" if found is None else "publishes no loopback port for "
                   f"container port {service.container_port}")
                + ", so the proxy has nothing to switch to; deploy again (a retry of this "
                  "step cannot start what Start application did not leave)",
                evidence=[f"{n}: {r.state} {r.ports}" for n, r in sorted(running.items())])
        targets[service.name] = (target, port)
    return targets


def _switch(ctx: DeployContext, log: StepLog,
            targets: dict[str, tuple[str, int | None]]) -> None:
    """Every service is healthy: the proxy serves the new containers (one reload), the old
    configuration's requests finish, the old containers stop and the new take their names;
    then each public port must answer through the proxy."""
    host = ctx.host()
    proxied_services = [s for s in ctx.app.services if proxied(ctx, s)]
    routes = ProxyRoutes(ctx, log)
    wanted = {s.host_port: port for s in proxied_services
              if (port := targets[s.name][1]) is not None}
    moving = [s for s in proxied_services
              if targets[s.name][0] != c.container_name(ctx.app.name, s.name)]
    if wanted != routes.applied():
        routes.drain(routes.apply(wanted))
    for service in moving:
        name = c.container_name(ctx.app.name, service.name)
        host.run(c.docker_stop(name), log)
        host.run(c.docker_remove_container(name), log)
        host.run(c.docker_rename(next_name(name), name), log)
    for service in proxied_services:
        ok, answer = probe(host, service, min(PROBE_TIMEOUT, max(0.05, ctx.seconds_left())))
        log.info("probe %s through the proxy: %s", service.name, answer)
        if not ok:
            sink = CollectingSink(log)
            host.run(c.docker_container_logs(proxy.CONTAINER, tail=10), sink, check=False)
            raise StepFailed(
                f"service {service.name} is healthy but does not answer through the proxy "
                f"on port {service.host_port}: {answer}",
                evidence=[answer] + [text for _, text in sink.lines])
