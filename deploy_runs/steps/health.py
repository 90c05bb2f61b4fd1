"""Health check: probe every service from the server (HTTP GET or TCP connect through an SSH
channel, so the server needs no probe tool) until healthy or its timeout. On failure the
evidence (probe answers, container state and last log lines, port bindings) is captured
before anything else happens, and put in the step's log and error."""

from __future__ import annotations

import time

import paramiko

from blocks import Service
from deploy_runs import commands as c
from deploy_runs.errors import StepFailed
from deploy_runs.remote import CollectingSink, RemoteHost
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import StepSpec, step

NAME = "Health check"
SPEC = StepSpec(NAME, limit="health",
                inputs=lambda app, commit: [s.health_check.model_dump() for s in app.services])
PROBE_TIMEOUT = 5.0


def probe(host: RemoteHost, service: Service, limit: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """One probe of a service's published port on the server; (healthy, what it answered).
    The whole probe takes at most `limit` seconds (at most PROBE_TIMEOUT), however slowly
    the service answers: a status line sent a byte a second does not hold it."""
    check = service.health_check
    port = service.host_port
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
                 log: StepLog) -> tuple[bool, list[str]]:
    check = service.health_check
    deadline = time.monotonic() + check.timeout
    answers: list[str] = []
    last, repeats = None, 0
    while True:
        ctx.check_stopped()
        ctx.check_deadline()
        healthy, answer = probe(host, service, min(ctx.seconds_left(),
                                                   deadline - time.monotonic() + PROBE_TIMEOUT))
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
             log: StepLog) -> tuple[list[str], str]:
    """The container's state, port bindings and last log lines; and its state in words."""
    name = c.container_name(ctx.app.name, service.name)
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
    healthy: dict[str, str] = {}
    for service in ctx.app.services:
        ok, answers = wait_healthy(ctx, host, service, log)
        if not ok:
            found, state = evidence(host, ctx, service, log)
            name = c.container_name(ctx.app.name, service.name)
            release = ctx.releases.get(service.name)
            if release and release.container == "replaced" and \
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
    # Every service is healthy: the release is complete, the previous containers can go.
    for service in ctx.app.services:
        release = ctx.releases.get(service.name)
        if release and release.container == "replaced" and \
                release.container_reason != "new service":
            previous = c.previous_name(c.container_name(ctx.app.name, service.name))
            host.run(c.docker_remove_container(previous), log, check=False)
    return healthy
