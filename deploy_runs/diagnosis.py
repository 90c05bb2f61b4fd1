"""Diagnosis: what a failure's text says went wrong, and what to change.

`diagnose(text, step)` is a pure function over a failed command's output and error text. Each
rule below was written against the real output of that failure, produced in the sandbox and
kept under `tests/fixtures/failures/` (`tests/integration/test_failures.py` produces them again
for real and checks the diagnosis end to end). Rules are ordered most specific first; nothing
matched gives an empty list, never a guess.

Suggesters (e.g. a chat backend's AI) add to or replace the built-in suggestions: see
`register_suggester`. They are found in-process (registered) and through the Python entry-point
group `deploy_runs.suggesters`, so a worker picks up an installed package's suggester.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from deploy_runs.models import Failure, Suggestion

if TYPE_CHECKING:
    from blocks import Application, Service

logger = logging.getLogger("deploy_runs.diagnosis")

Detail = Callable[[re.Match[str], "Application | None"], tuple[str, str]]


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    explain: Detail
    steps: tuple[str, ...] = ()  # empty: any step


def _service_by_port(app: Application | None, port: str) -> Service | None:
    if app is None or not port.isdigit():
        return None
    return next((s for s in app.services if s.host_port == int(port)), None)


def _service_by_name(app: Application | None, name: str) -> Service | None:
    if app is None:
        return None
    return next((s for s in app.services if name.endswith(f"-{s.name}") or name == s.name), None)


def _where(app: Application | None) -> str:
    return f" of app {app.name}" if app is not None else ""


def _server(app: Application | None) -> str:
    if app is None:
        return "the server"
    s = app.server
    return f"{s.username}@{s.host}:{s.port}"


# --- the rules, each with what to do -------------------------------------------------------

def _port_in_use(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    port = m.group("port1") or m.group("port2") or "?"
    holder = ("another container" if "already allocated" in m.group(0)
              else "another process (not a container)")
    service = _service_by_port(app, port)
    setting = (f"services[{service.name}].host_port{_where(app)} (now {port})" if service
               else "the service's host_port")
    return (f"Port {port} on the server is already in use",
            f"Port {port} is held by {holder} on {_server(app)}. Change {setting} to a free "
            f"port, or stop what holds port {port} on the server and retry.")


def _disk_full(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    return ("The server's disk is full",
            f"A write failed with 'No space left on device' on {_server(app)}. Free space "
            "there: `docker image prune` / `docker system prune` removes unused images and "
            "stopped containers; check `df -h` (and the filesystem of the deploy directory "
            "and of Docker's data root), then retry.")


def _ssh_auth(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    user = app.server.username if app else "the deploy user"
    return ("The server refused the SSH key",
            f"SSH authentication as {user} failed on {_server(app)}. Add the public half of "
            f"the server block's private_key to {user}'s authorized_keys on the server, or fix "
            "the server block's username / private_key.")


def _host_key(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    return ("The server's host key is not the pinned one",
            f"{_server(app)} offered a different host key than the one pinned in the server "
            "block's host_key (both fingerprints are in the error). If the server was "
            "reinstalled, check the new key out of band (`ssh-keygen -lf` on the server's "
            "/etc/ssh/ssh_host_*_key.pub) and set host_key to it; otherwise do not connect: "
            "someone may be in the middle.")


def _unreachable(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    return ("The server cannot be reached over SSH",
            f"{_server(app)} did not answer ({m.group('why').strip()}). Check that the server "
            "is up, that sshd listens on that port and nothing blocks it, and the server "
            "block's host and port.")


def _docker_down(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    return ("The Docker engine on the server is not running",
            f"The docker CLI on {_server(app)} cannot reach its engine ({m.group('sock')}). "
            "Start the engine there (`systemctl start docker`, or `dockerd`) and retry.")


def _docker_permission(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    user = app.server.username if app else "the deploy user"
    return ("The deploy user may not use Docker",
            f"{user} on {_server(app)} has no access to the Docker socket. Add it to the "
            f"docker group on the server (`usermod -aG docker {user}`; it takes effect at the "
            "next login) and retry.")


def _dockerfile_missing(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    path = m.group("path")
    service = next((s for s in app.services if s.dockerfile == path), None) if app else None
    setting = f"services[{service.name}].dockerfile" if service else "the service's dockerfile"
    return (f"Dockerfile {path} is not in the repository",
            f"{path} does not exist at the deployed commit. Commit it, or set {setting}"
            f"{_where(app)} to the Dockerfile's path in the repository.")


def _build_file_missing(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    name = (m.group("file") or m.group("ctx") or "a file").strip()
    if m.group("ctx"):
        return (f"Build context {name} is not in the repository",
                f"The directory {name} does not exist at the deployed commit. Commit it, or "
                f"fix the service's context setting{_where(app)}.")
    return (f"{name} is missing from the build context",
            f"A COPY/ADD in the Dockerfile names {name}, which is not in the service's build "
            "context at the deployed commit. Commit the file, fix the path in the Dockerfile "
            "(paths are relative to the context directory), or check .dockerignore.")


def _build_command(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    command, code = m.group("cmd") or m.group("cmd2") or "a RUN instruction", \
        m.group("code") or m.group("code2") or "?"
    return ("A build command failed",
            f"The Dockerfile's RUN `{command.strip()}` exited with code {code}. The build log "
            "lines just before it say why; fix the command or what it needs in the "
            "repository, push, and redeploy.")


def _image_not_found(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    image = (m.group("img") or m.group("img2") or m.group("img3") or m.group("img4")
             or "the image").strip()
    return (f"Image {image} is not available",
            f"{image} is not in the server's Docker engine and cannot be pulled (no such "
            "image, or its registry cannot be reached). Build or load it on the server "
            "first (e.g. the base image of a FROM line), or fix the image name.")


def _oom(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    service = _service_by_name(app, m.group("service") or "")
    limit = (f"services[{service.name}].memory (now {service.memory or 'unlimited'})"
             if service else "the service's memory limit")
    who = f"The container of service {service.name}" if service else "The container"
    return ("The container ran out of memory",
            f"{who} was killed by the kernel's OOM killer (exit code 137). Raise {limit}"
            f"{_where(app)}, or make the service use less memory.")


def _container_exited(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    code = m.group("code") or m.group("code0") or "?"
    restarts = m.group("restarts") or "0"
    name = m.group("service") or ""
    who = f"The container of service {name}" if name else "The container"
    again = f" and was restarted {restarts} time(s)" if restarts != "0" else ""
    return (f"The container exited at start (code {code})" if code != "0"
            else "The container keeps exiting at start",
            f"{who} stopped right after it started (last exit code {code}){again}. Its last "
            "log lines (in the error) say why: check the image's command, the service's env "
            "and secrets, and files it expects.")


def _health(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    name, probe = m.group("service"), m.group("probe")
    service = _service_by_name(app, name)
    check = service.health_check if service else None
    what = (f"It probes {check.type} port {service.host_port}"
            + (f" path {check.path} expecting HTTP {check.expected_status}"
               if check.type == "http" else "") + f" for {check.timeout:g}s. "
            if service and check else "")
    return (f"Service {name} did not become healthy",
            f"The last probe answered: {probe}. {what}Check that the app listens on its "
            f"container_port, and services[{name}].health_check (path, expected_status, "
            "timeout) — the container's log lines in the error show what it did.")


def _git_ref(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    ref = m.group("ref") or m.group("ref2") or "the ref"
    return (f"Git ref {ref} does not exist",
            f"{ref} is not a branch, tag or commit of {app.repository if app else 'the repository'}."
            " Push it, or deploy an existing ref (or fix the app's branch setting).")


def _git_repo(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    repo = app.repository if app else "the repository"
    return ("The git repository cannot be found",
            f"The server could not read {repo} ({m.group(0).strip()[:160]}). Fix the app's "
            "repository URL, or give the server access to it (a deploy key or a reachable "
            "git server).")


def _timeout(m: re.Match[str], app: Application | None) -> tuple[str, str]:
    return ("A command took longer than its timeout",
            f"{m.group(0).strip()}. The command was killed on the server. If it needs longer, "
            "raise the step's timeout in the app's timeouts setting; otherwise find out why it "
            "hangs (the last output lines are in the error).")


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE | re.MULTILINE)


RULES: tuple[Rule, ...] = (
    Rule("command-timeout", _r(r"(?:command|step|run) timed out after [^\n]*?(?=[:;]|$)"),
         _timeout),
    Rule("host-key-mismatch", _r(r"host key mismatch|offered host key .*no host key is pinned"
                                 r"|offers no host key of the pinned type"), _host_key),
    Rule("ssh-auth", _r(r"SSH authentication failed|private key could not be read"), _ssh_auth),
    Rule("server-unreachable",
         _r(r"(?:cannot reach|SSH connection to) \S+(?: failed)?:\s*(?P<why>[^\n]+)"
            r"|SSH connection to \S+ was lost(?P<why2>)"), _unreachable),
    Rule("docker-permission",
         _r(r"permission denied while trying to connect to the Docker daemon"),
         _docker_permission),
    Rule("docker-daemon-down",
         _r(r"Cannot connect to the Docker daemon at (?P<sock>\S+?)\.? Is the docker daemon"),
         _docker_down),
    Rule("disk-full", _r(r"no space left on device"), _disk_full),
    Rule("out-of-memory",
         _r(r"service (?P<service>\S+) did not become healthy[\s\S]*?oom_killed=true"
            r"|oom_killed=true"), _oom),
    Rule("port-in-use",
         _r(r"Bind for [\d.:\[\]]*:(?P<port1>\d+) failed: port is already allocated"
            r"|listen tcp[46]? [\d.:\[\]]*:(?P<port2>\d+): bind: address already in use"),
         _port_in_use),
    Rule("dockerfile-missing",
         _r(r"Dockerfile (?P<path>\S+) does not exist"), _dockerfile_missing),
    Rule("build-file-missing",
         _r(r"(?:COPY|ADD) failed: (?:file not found in build context[^:]*: )?"
            r"stat (?:[^:\n]*/)?(?P<file>[^:\n]+): file does not exist"
            r"|build context (?P<ctx>\S+) does not exist"), _build_file_missing),
    Rule("image-not-found",
         _r(r"No such image: (?P<img>\S+)|pull access denied for (?P<img2>[^,\s]+)"
            r"|manifest for (?P<img3>\S+) not found|Unable to find image"
            r"|FROM (?P<img4>\S+)\s*\n(?:[^\n]*\n)?[^\n]*(?:/v2/|pull access denied"
            r"|manifest unknown|repository does not exist)"
            r"|repository does not exist|failed to resolve source metadata"
            r"|error pulling image configuration"), _image_not_found),
    Rule("build-command-failed",
         _r(r"The command '(?P<cmd>[^\n]*)' returned a non-zero code: (?P<code>\d+)"
            r"|process \"(?P<cmd2>[^\n]*)\" did not complete successfully: exit code: "
            r"(?P<code2>\d+)"), _build_command),
    Rule("container-exited",
         _r(r"(?:service (?P<service>\S+) did not become healthy[\s\S]*?)?"
            r"status=(?:(?:exited|restarting|dead) exit_code=(?P<code>[1-9]\d*)"
            r"|\w+ exit_code=(?P<code0>\d+) oom_killed=false restarts=(?P<restarts>[1-9]\d*))"),
         _container_exited),
    Rule("health-check-failed",
         _r(r"service (?P<service>\S+) did not become healthy within [^(]*\(last probe: "
            r"(?P<probe>[^\n]*?)\);"), _health),
    Rule("git-ref-not-found",
         _r(r"git ref '(?P<ref>[^']+)' was not found|couldn't find remote ref (?P<ref2>\S+)"),
         _git_ref),
    Rule("git-repo-not-found",
         _r(r"repository not exported|no such repository|does not appear to be a git repository"
            r"|repository '[^']*' not found|Could not read from remote repository"
            r"|unable to connect to \S+:|Connection refused"), _git_repo, ("Fetch source",)),
)


def diagnose(text: str, step: str | None = None, *,
             app: Application | None = None) -> list[Suggestion]:
    """Suggested fixes for a failure, most specific first, from the failing command's output
    and error text. `step` narrows rules that only make sense in one step; `app` (optional)
    lets the detail name the exact setting to change. Nothing recognised: []."""
    found: list[Suggestion] = []
    for rule in RULES:
        if rule.steps and step is not None and step not in rule.steps:
            continue
        match = rule.pattern.search(text)
        if match is None:
            continue
        title, detail = rule.explain(match, app)
        evidence = next((line for line in text.splitlines()
                         if match.group(0).splitlines()[-1].strip() in line),
                        match.group(0))
        found.append(Suggestion(kind=rule.kind, title=title, detail=detail,
                                evidence=evidence.strip()[:500]))
    return found


# --- signatures (the same failure in different runs) ----------------------------------------

_VOLATILE = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"),
     "<time>"),
    (re.compile(r"\b[0-9a-f]{7,64}\b"), "<hash>"),
    (re.compile(r"(?:/[\w.@+-]+){2,}/?"), "<path>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "<ip>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


def normalise(text: str) -> str:
    """Error text with its volatile parts (ids, hashes, times, paths, addresses, numbers)
    replaced by placeholders."""
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return re.sub(r"\s+", " ", text).strip()


def signature(failure: Failure) -> str:
    kind = failure.suggestions[0].kind if failure.suggestions else "unknown"
    first_line = failure.message.splitlines()[0] if failure.message else ""
    return f"{kind}|{failure.step}|{normalise(first_line)[:200]}"


# --- suggesters --------------------------------------------------------------------------

@dataclass
class FailureContext:
    """What a suggester is given besides the failure: the run and its app."""

    run_id: str
    app_name: str
    app: Application | None = None
    commit: str | None = None
    log_tail: list[str] = field(default_factory=list)
    history: list[Failure] = field(default_factory=list)


Suggester = Callable[[Failure, FailureContext], Iterable[Suggestion | dict[str, Any]]]


@dataclass
class _Registered:
    fn: Suggester
    replace: bool
    name: str


_registered: list[_Registered] = []


def register_suggester(fn: Suggester, *, replace: bool = False, name: str | None = None) -> Suggester:
    """Add a suggester: `fn(failure, context)` returns suggestions (models or dicts with kind,
    title, detail, evidence). With `replace=True` its suggestions replace the built-in ones
    (when it returns any). Usable as a decorator. Registered suggesters run in the process
    that runs the deploy flow; to reach a worker, expose the function in the entry-point
    group `deploy_runs.suggesters` of an installed package instead."""
    _registered.append(_Registered(fn, replace, name or getattr(fn, "__name__", "suggester")))
    return fn


def unregister_suggester(fn: Suggester) -> None:
    _registered[:] = [r for r in _registered if r.fn is not fn]


def _suggesters() -> list[_Registered]:
    found = list(_registered)
    for entry in entry_points(group="deploy_runs.suggesters"):
        try:
            fn = entry.load()
        except Exception as exc:  # a broken plugin must not break the failure report
            logger.warning("suggester %s could not be loaded: %s", entry.name, exc)
            continue
        found.append(_Registered(fn, bool(getattr(fn, "replace", False)), entry.name))
    return found


def suggest(failure: Failure, context: FailureContext) -> list[Suggestion]:
    """The built-in suggestions for `failure`, then every suggester's (added, or replacing the
    built-in ones). A suggester that raises is logged and skipped."""
    suggestions = diagnose(failure.text(), failure.step, app=context.app)
    for suggester in _suggesters():
        try:
            extra = [s if isinstance(s, Suggestion) else Suggestion.model_validate(s)
                     for s in suggester.fn(failure, context) or ()]
        except Exception as exc:
            logger.warning("suggester %s failed: %s", suggester.name, exc)
            continue
        for s in extra:
            if s.source == "built-in":
                s.source = suggester.name
        suggestions = extra if suggester.replace and extra else suggestions + extra
    return suggestions


def seen_before(sig: str, history: list[tuple[str | None, Any]]) -> str | None:
    """'seen in N of the last M runs, first on ...' from earlier runs' (signature, started)
    pairs, most recent first; None when it did not happen before."""
    times = [when for s, when in history if s == sig]
    if not times:
        return None
    first = min(t for t in times if t is not None) if any(times) else None
    when = f", first on {first:%Y-%m-%d %H:%M} UTC" if first else ""
    return f"seen in {len(times)} of the last {len(history)} runs{when}"
