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

Detail = Callable[[re.Match[str], "Application | None", list[str]], tuple[str, str]]

# How much of a failure's text diagnosis reads: every rule runs on each line, so the cost is
# linear in this bounded amount, whatever the text (a 1 MB line, a flood of lines).
LINE_CHARS = 2000  # a longer line is read as its first and last 1,000 characters
MAX_LINES = 300  # the first line (the message) and the last lines before it
_ANSI = re.compile(r"\x1b\[[0-9;?]{0,20}[A-Za-z]")


@dataclass(frozen=True)
class Rule:
    """One kind of failure: the wordings (line patterns) real tools print for it, the
    literal words one of which a line must contain before its patterns are tried, and what to
    say. Patterns are matched a line at a time, and every quantifier in them is bounded or
    over a class that stops at a delimiter, so a rule costs time linear in the line."""

    kind: str
    patterns: tuple[re.Pattern[str], ...]
    explain: Detail
    scoped: bool = False  # True: only in the steps that list its kind (StepSpec.diagnosis)
    words: tuple[str, ...] = ()  # lowercase; empty: try every line

    def search(self, line: str, lowered: str) -> re.Match[str] | None:
        if self.words and not any(w in lowered for w in self.words):
            return None
        for pattern in self.patterns:
            match = pattern.search(line)
            if match is not None:
                return match
        return None


def _service_by_port(app: Application | None, port: str) -> Service | None:
    if app is None or not port.isdigit():
        return None
    return next((s for s in app.services if s.host_port == int(port)), None)


def _service_by_name(app: Application | None, name: str) -> Service | None:
    if app is None or not name:
        return None
    return next((s for s in app.services if name.endswith(f"-{s.name}") or name == s.name), None)


def _where(app: Application | None) -> str:
    return f" of app {app.name}" if app is not None else ""


def _server(app: Application | None) -> str:
    if app is None:
        return "the server"
    s = app.server
    return f"{s.username}@{s.host}:{s.port}"


def _group(m: re.Match[str], *names: str) -> str:
    """The first of the named groups that took part in the match ('' if none)."""
    groups = m.re.groupindex
    for name in names:
        if name in groups and m.group(name):
            return m.group(name)
    return ""


def _find(lines: list[str], pattern: re.Pattern[str]) -> re.Match[str] | None:
    for line in lines:
        found = pattern.search(line)
        if found:
            return found
    return None


def _in_repo(path: str) -> str:
    """A path on the server shown relative to the app's checkout when it is inside one."""
    for marker in ("/repo/", "/buildkit-mount"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/buildkit-mount" and "/" in rest else rest
    return path


# --- what to say for each kind ---------------------------------------------------------------

def _port_in_use(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    port = _group(m, "port1", "port2", "port3", "port4", "port5", "port6") or "?"
    who = _group(m, "who")
    holder = ("another container" if "already allocated" in m.group(0) or who == "container"
              else "another process (not a container)" if who or (
                  "bind" in m.group(0).lower() and "bind()" not in m.group(0).lower())
              else "another container or process")
    service = _service_by_port(app, port)
    setting = (f"services[{service.name}].host_port{_where(app)} (now {port})" if service
               else "the service's host_port")
    return (f"Port {port} on the server is already in use",
            f"Port {port} is held by {holder} on {_server(app)}. Change {setting} to a free "
            f"port, or stop what holds port {port} on the server and retry.")


def _disk_full(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    return ("The server's disk is full",
            f"A write failed with '{m.group(0)}' on {_server(app)}. Free space there: "
            "`docker image prune` / `docker system prune` removes unused images and stopped "
            "containers, `docker builder prune` the build cache; check `df -h` (and the "
            "filesystem of the deploy directory and of Docker's data root), then retry.")


def _ssh_auth(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    user = app.server.username if app else "the deploy user"
    return ("The server refused the SSH key",
            f"SSH authentication as {user} failed on {_server(app)}. Add the public half of "
            f"the server block's private_key to {user}'s authorized_keys on the server, or fix "
            "the server block's username / private_key (an OpenSSH or PEM private key, not "
            "encrypted).")


def _host_key(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    return ("The server's host key is not the pinned one",
            f"{_server(app)} offered a different host key than the one pinned in the server "
            "block's host_key (or none is pinned). If the server was reinstalled, check the "
            "new key out of band (`ssh-keygen -lf` on the server's "
            "/etc/ssh/ssh_host_*_key.pub) and set host_key to it; otherwise do not connect: "
            "someone may be in the middle.")


def _unreachable(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    why = (_group(m, "why") or m.group(0)).strip()[:200]
    return ("The server cannot be reached over SSH",
            f"{_server(app)} did not answer ({why}). Check that the server is up, that its "
            "name resolves, that sshd listens on that port and nothing (a firewall, a "
            "fail2ban ban) blocks it, and the server block's host and port.")


def _docker_down(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    sock = _group(m, "sock") or "its socket"
    return ("The Docker engine on the server is not running",
            f"The docker CLI on {_server(app)} cannot reach its engine ({sock}). "
            "Start the engine there (`systemctl start docker`, or `dockerd`) and retry.")


def _docker_permission(m: re.Match[str], app: Application | None,
                       lines: list[str]) -> tuple[str, str]:
    user = app.server.username if app else "the deploy user"
    return ("The deploy user may not use Docker",
            f"{user} on {_server(app)} has no access to the Docker socket. Add it to the "
            f"docker group on the server (`usermod -aG docker {user}`; it takes effect at the "
            "next login) and retry.")


def _dockerfile_missing(m: re.Match[str], app: Application | None,
                        lines: list[str]) -> tuple[str, str]:
    path = _in_repo(_group(m, "path", "path2", "path3", "path4") or "the Dockerfile")
    service = next((s for s in app.services if s.dockerfile == path
                    or path.endswith("/" + s.dockerfile)), None) if app else None
    setting = f"services[{service.name}].dockerfile" if service else "the service's dockerfile"
    return (f"Dockerfile {path} is not in the repository",
            f"{path} does not exist at the deployed commit. Commit it, or set {setting}"
            f"{_where(app)} to the Dockerfile's path in the repository.")


def _build_file_missing(m: re.Match[str], app: Application | None,
                        lines: list[str]) -> tuple[str, str]:
    ctx = _group(m, "ctx", "ctx2")
    if ctx:
        ctx = _in_repo(ctx)
        return (f"Build context {ctx} is not in the repository",
                f"The directory {ctx} does not exist at the deployed commit. Commit it, or "
                f"fix the service's context setting{_where(app)}.")
    name = _in_repo(_group(m, "file", "file2", "file3", "file4") or "a file").strip()
    if name.startswith("/") and "/var/lib/docker" not in name:
        name = name[1:]  # BuildKit names a COPY source from the context's root
    return (f"{name} is missing from the build context",
            f"A COPY/ADD in the Dockerfile names {name}, which is not in the service's build "
            "context at the deployed commit. Commit the file, fix the path in the Dockerfile "
            "(paths are relative to the context directory), or check .dockerignore.")


def _build_command(m: re.Match[str], app: Application | None,
                   lines: list[str]) -> tuple[str, str]:
    command = _group(m, "cmd", "cmd2", "cmd3") or "a RUN instruction"
    code = _group(m, "code", "code2", "code3") or "?"
    return (f"A build command failed (exit code {code})",
            f"The Dockerfile's RUN `{command.strip()[:300]}` exited with code {code}. The build "
            "log lines just before it say why; fix the command or what it needs in the "
            "repository, push, and redeploy.")


_IMAGE_NAME = re.compile(r"load metadata for (?P<img>\S{1,300})"
                         r"|^\s*(?:Step \d+/\d+ : )?FROM (?P<img2>\S{1,200})", re.IGNORECASE)


def _image_not_found(m: re.Match[str], app: Application | None,
                     lines: list[str]) -> tuple[str, str]:
    image = _group(m, "img", "img2", "img3", "img4", "img5", "img6")
    if not image:
        found = _find(lines, _IMAGE_NAME)
        image = _group(found, "img", "img2") if found else ""
    image = (image or "the image").strip().rstrip(".,:")
    return (f"Image {image} is not available",
            f"{image} is not in the server's Docker engine and cannot be pulled (no such "
            "image or tag, no access to its registry, or the registry cannot be reached). "
            "Build or load it on the server first (e.g. the base image of a FROM line), log "
            "the server in to its registry, or fix the image name.")


_SERVICE_NOT_HEALTHY = re.compile(r"service (?P<service>[a-z0-9-]{1,40}) did not become healthy")
_CONTAINER_NAME = re.compile(r"(?:docker (?:inspect|logs|port) [^\n]{0,300}? |^)"
                             r"(?P<name>[a-z0-9][a-z0-9-]{0,80})\s*$")


def _service_of(lines: list[str], app: Application | None) -> Service | None:
    found = _find(lines, _SERVICE_NOT_HEALTHY)
    if found:
        return _service_by_name(app, found.group("service"))
    return None


def _oom(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    service = _service_of(lines, app)
    limit = (f"services[{service.name}].memory (now {service.memory or 'unlimited'})"
             if service else "the service's memory limit")
    if any(_group(m, g) for g in ("build1", "build2", "build3", "build4")):
        return ("A build step ran out of memory",
                "A RUN instruction of the Dockerfile was killed (exit code 137, SIGKILL: the "
                f"kernel's OOM killer) on {_server(app)}. Give the server more memory or swap, "
                "or make the build use less (fewer parallel jobs, e.g. `make -j2`, "
                "NODE_OPTIONS=--max-old-space-size).")
    who = f"The container of service {service.name}" if service else "The container"
    return ("The container ran out of memory",
            f"{who} was killed by the kernel's OOM killer (exit code 137). Raise {limit}"
            f"{_where(app)}, or make the service use less memory.")


def _container_exited(m: re.Match[str], app: Application | None,
                      lines: list[str]) -> tuple[str, str]:
    code = _group(m, "code", "code0", "code2", "code3")
    restarts = _group(m, "restarts") or "0"
    service = _service_of(lines, app)
    who = f"The container of service {service.name}" if service else "The container"
    cause = m.group(0).strip()
    if _group(m, "exec1", "exec2", "exec3", "exec4", "exec5"):
        return ("The container's command cannot be started",
                f"{who} could not run its command ({cause[:200]}). Check the image's "
                "ENTRYPOINT/CMD: the program must exist in the image, be executable, and be "
                "built for the server's CPU architecture (exec format error: an arm64 image "
                "on an amd64 server or the reverse; a script needs a valid #! line).")
    again = f" and was restarted {restarts} time(s)" if restarts != "0" else ""
    return (f"The container exited at start (code {code})" if code and code != "0"
            else "The container keeps exiting at start",
            f"{who} stopped right after it started (last exit code {code or '?'}){again}. Its "
            "last log lines (in the error) say why: check the image's command, the service's "
            "env and secrets, and files it expects.")


_LISTENING = re.compile(r"listen(?:ing)?\b[^\n]{0,40}?(?:port |:)(?P<port>\d{2,5})\b",
                        re.IGNORECASE)


def _health(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    found = _find(lines, _SERVICE_NOT_HEALTHY)
    name = found.group("service") if found else _group(m, "service")
    probe = (_group(m, "probe") or m.group(0)).strip()[:300]
    service = _service_by_name(app, name)
    check = service.health_check if service else None
    what = (f"It probes {check.type} port {service.host_port}"
            + (f" path {check.path} expecting HTTP {check.expected_status}"
               if check.type == "http" else "") + f" for {check.timeout:g}s. "
            if service and check else "")
    hint = ""
    listening = _find(lines, _LISTENING)
    if service and listening and int(listening.group("port")) != service.container_port:
        hint = (f"Its log says it listens on port {listening.group('port')}, but "
                f"services[{service.name}].container_port is {service.container_port}. ")
    who = f"Service {name}" if name else "The service"
    return (f"{who} did not become healthy",
            f"The last probe answered: {probe}. {what}{hint}Check that the app listens on its "
            f"container_port (on 0.0.0.0, not 127.0.0.1, inside the container), and "
            f"{'services[' + name + '].' if name else 'the service'}health_check (path, "
            "expected_status, timeout) — the container's log lines in the error show what it "
            "did.")


def _git_ref(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    ref = (_group(m, "ref", "ref2", "ref3", "ref4", "ref5", "ref6", "ref7") or "the ref")
    ref = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    return (f"Git ref {ref} does not exist",
            f"{ref} is not a branch, tag or commit of {app.repository if app else 'the repository'}."
            " Push it, or deploy an existing ref (or fix the app's branch setting).")


def _git_repo(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    repo = app.repository if app else "the repository"
    return ("The git repository cannot be found or read",
            f"The server could not read {repo} ({m.group(0).strip()[:160]}). Fix the app's "
            "repository URL, or give the server access to it (a deploy key in the deploy "
            "user's ~/.ssh, or a git credential helper) and check that the git host is "
            "reachable from the server.")


def _timeout(m: re.Match[str], app: Application | None, lines: list[str]) -> tuple[str, str]:
    return ("A command took longer than its timeout",
            f"{m.group(0).strip()}. The command was killed on the server. If it needs longer, "
            "raise the step's timeout in the app's timeouts setting; otherwise find out why it "
            "hangs (the last output lines are in the error).")


def _r(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


# A path or name in a message: no spaces, bounded
_P = r"[^\s\"']{1,400}"

# Most specific first: the first rule that matches is the headline. Sources of each wording
# are in tests/fixtures/failures (produced in the sandbox) and tests/fixtures/wording (quoted
# from each tool's source and from outputs users posted, with the versions that print it).
RULES: tuple[Rule, ...] = (
    Rule("command-timeout", _r(r"\b(?:command|step|run) timed out after \d[\d.]{0,12}s"
                               r"(?: \(timeouts\.\w{1,20}\))?",
                               r"^timeout: sending signal \w{1,10} to command [^\n]{1,300}"),
         _timeout, words=("timed out after", "timeout: sending signal")),
    Rule("disk-full", _r(r"no space left on device", r"disk quota exceeded",
                         r"not enough (?:free )?(?:disk )?space"),
         _disk_full, words=("space", "quota")),
    # git's own wording of a repository it cannot read (also over SSH: "Permission denied
    # (publickey)" followed by git's line is the repository's access, not the server's)
    Rule("git-repo-not-found", _r(
        r"Could not read from remote repository",
        r"'" + _P + r"' does not appear to be a git repository",
        r"not a git repository",
        r"repository '[^']{1,500}' (?:not found|does not exist)",
        r"remote: Repository not found",
        r"^ERROR: Repository not found",
        r"The project you were looking for could not be found",
        r"repository not exported|access denied or repository not exported",
        r"fatal: remote error: [^\n]{0,200}(?:not found|no such|denied|not exported)",
        r"no such repository",
        r"fatal: unable to access '[^']{1,500}': [^\n]{1,200}",
        r"fatal: unable to connect to \S{1,300}",
        r"Authentication failed for '[^']{1,500}'",
        r"could not read (?:Username|Password) for '[^']{1,500}'",
        r"The requested URL returned error: (?:401|403|404)"),
         _git_repo, words=("remote repository", "git repository", "repository", "not exported",
                           "project you were looking", "unable to access", "unable to connect",
                           "authentication failed for", "could not read", "requested url")),
    Rule("git-ref-not-found", _r(
        r"git ref '(?P<ref>[^']{1,300})' was not found",
        r"couldn't find remote ref (?P<ref2>\S{1,300})",
        r"Remote branch (?P<ref3>\S{1,300}) not found in upstream",
        r"Could not find remote branch (?P<ref4>\S{1,300}) to clone",
        r"pathspec '(?P<ref5>[^']{1,300})' did not match any file",
        r"reference is not a tree: (?P<ref6>\S{1,300})",
        r"ambiguous argument '(?P<ref7>[^']{1,300})': unknown revision",
        r"fatal: invalid reference: (?P<ref>\S{1,300})",
        r"fatal: bad revision '(?P<ref2>[^']{1,300})'",
        r"fatal: Needed a single revision",
        r"unadvertised object (?P<ref3>\S{1,300})",
        r"not our ref (?P<ref4>\S{1,300})",
        r"'(?P<ref5>[^']{1,300})' is not a commit and a branch",
        r"--detach does not take a path argument '(?P<ref6>[^']{1,300})'"),
         _git_ref, words=("git ref", "remote ref", "remote branch", "pathspec", "not a tree",
                          "unknown revision", "invalid reference", "bad revision",
                          "single revision", "unadvertised", "not our ref", "not a commit",
                          "path argument")),
    Rule("host-key-mismatch", _r(
        r"host key mismatch",
        r"offered host key \S{1,100} \S{1,200}, but no host key is pinned",
        r"offers no host key of the pinned type",
        r"REMOTE HOST IDENTIFICATION HAS CHANGED",
        r"Host key verification failed",
        r"Host key for \S{1,300} has changed and you have requested strict checking",
        r"No \S{1,20} host key is known for \S{1,300} and you have requested strict checking",
        r"BadHostKeyException",
        r"Host key for server '?[^\s']{1,300}'? does not match",
        r"Server '?[^\s']{1,300}'? not found in known_hosts"),
         _host_key, words=("host key", "hostkey", "host identification", "known_hosts")),
    Rule("ssh-auth", _r(
        r"SSH authentication failed",
        r"private key could not be read",
        r"Permission denied \((?:publickey|password|keyboard-interactive|gssapi|hostbased)",
        r"Load key \"[^\"]{1,400}\": (?:invalid format|bad permissions|incorrect passphrase)",
        r"Too many authentication failures",
        r"AuthenticationException",
        r"BadAuthenticationType",
        r"PasswordRequiredException",
        r"not a valid (?:RSA|DSA|EC|OPENSSH) private key file",
        r"Private key file is encrypted",
        r"No authentication methods available",
        r"Authentication failed\.?$"),
         _ssh_auth, words=("authentication", "private key", "permission denied (", "load key",
                           "authenticationexception", "authenticationtype", "passwordrequired")),
    Rule("server-unreachable", _r(
        r"(?:cannot reach|SSH connection to) \S{1,300}(?: failed)?:\s*(?P<why>[^\n]{1,300})",
        r"SSH connection to \S{1,300} was lost",
        r"ssh: connect to host \S{1,300} port \d{1,5}: (?P<why>[^\n]{1,200})",
        r"ssh: Could not resolve hostname \S{1,300}: (?P<why>[^\n]{1,200})",
        r"(?:kex|ssh)_exchange_identification: (?P<why>[^\n]{1,200})",
        r"Connection (?:closed|reset|timed out) by \S{1,300} port \d{1,5}",
        r"NoValidConnectionsError",
        r"Unable to connect to port \d{1,5} on \S{1,300}",
        r"Error reading SSH protocol banner",
        r"timed out during banner exchange",
        r"Connection to \S{1,300} port \d{1,5} timed out",
        r"No existing session"),
         _unreachable, words=("cannot reach", "ssh connection", "ssh: ", "exchange_identification",
                              "connection closed", "connection reset", "connection timed out",
                              "novalidconnections", "unable to connect to port",
                              "protocol banner", "banner exchange", "connection to ",
                              "no existing session")),
    # a Python socket error raised while connecting (printed by a tool built on paramiko)
    Rule("server-unreachable", _r(
        r"(?:socket\.timeout|TimeoutError|socket\.gaierror|ConnectionRefusedError|OSError):"
        r"(?P<why>[^\n]{0,200})"),
         _unreachable, scoped=True,
         words=("socket.", "timeouterror", "connectionrefusederror", "oserror")),
    Rule("docker-permission",
         _r(r"permission denied while trying to connect to the (?:Docker daemon|docker API)"),
         _docker_permission, words=("permission denied while trying",)),
    Rule("docker-daemon-down", _r(
        r"Cannot connect to the Docker daemon at (?P<sock>\S{1,300}?)\.? Is the docker daemon",
        r"failed to connect to the docker API at (?P<sock>[^\s;]{1,300})",
        r"Is the docker daemon running\?",
        r"the Docker engine is not usable by"),
         _docker_down, words=("docker daemon", "docker api", "docker engine")),
    Rule("port-in-use", _r(
        r"Bind for [\d.:\[\]a-f]{0,60}:(?P<port1>\d{1,5}) failed: port is already allocated",
        r"listen tcp[46]? [\d.:\[\]a-f]{0,60}:(?P<port2>\d{1,5}): bind: address already in use",
        r"failed to bind host port (?:for )?[\d.:\[\]a-f]{0,60}:(?P<port3>\d{1,5})"
        r"[^\n]{0,120}address already in use",
        r"ports are not available: exposing port TCP [\d.:\[\]a-f]{0,60}:(?P<port4>\d{1,5})",
        # nginx (the proxy) when it cannot listen on a public port
        r"bind\(\) to [\d.:\[\]a-f]{0,60}:(?P<port5>\d{1,5}) failed \((?:98: )?"
        r"address already in use\)",
        # deploy-runs' own check before the proxy first serves a port (steps/start.py)
        r"port (?P<port6>\d{1,5}) on the server is already in use by "
        r"(?P<who>container|another process)"),
         _port_in_use, words=("already allocated", "already in use", "ports are not available")),
    Rule("dockerfile-missing", _r(
        r"Dockerfile (?P<path>\S{1,400}) does not exist",
        r"unable to evaluate symlinks in Dockerfile path: lstat (?P<path2>[^:\n]{1,400}): "
        r"no such file",
        r"Cannot locate specified Dockerfile: ?(?P<path3>\S{1,400})",
        r"failed to read dockerfile: open (?P<path4>[^:\n]{1,400}): no such file"),
         _dockerfile_missing, words=("dockerfile",)),
    Rule("build-file-missing", _r(
        r"build context (?P<ctx>\S{1,400}) does not exist",
        r"unable to prepare context: path \"(?P<ctx2>[^\"]{1,400})\" not found",
        r"(?:COPY|ADD) failed: (?:file not found in build context[^:\n]{0,80}: )?"
        r"stat (?P<file>[^:\n]{1,400}): file does not exist",
        r"(?:COPY|ADD) failed: stat \S{0,200}/docker-builder\d{1,20}/(?P<file2>[^:\n]{1,400}): "
        r"no such file or directory",
        r"failed to compute cache key: [^\n]{0,200}?\"(?P<file3>[^\"\n]{1,400})\":? not found",
        r"failed to compute cache key: failed to walk [^:\n]{1,400}: lstat (?P<file4>[^:\n]{1,400}):"
        r" no such file or directory",
        r"(?:COPY|ADD) failed: no source files were specified"),
         _build_file_missing, words=("build context", "prepare context", "copy failed",
                                     "add failed", "compute cache key")),
    Rule("out-of-memory", _r(
        r"oom_killed=true",
        r"\"OOMKilled\":\s{0,3}true",
        r"(?P<build1>did not complete successfully: exit code: 137)",
        r"(?P<build2>executor failed running \[[^\n]{0,400}\]: exit code: 137)",
        r"(?P<build3>returned a non-zero code: 137)",
        r"(?P<build4>Killed signal terminated program)",
        r"\bExited \(137\)",
        r"status=\w{1,20} exit_code=137\b"),
         _oom, words=("oom", "137", "killed signal")),
    Rule("image-not-found", _r(
        r"No such image: (?P<img>\S{1,300})",
        r"pull access denied for (?P<img2>[^,\s]{1,300})",
        r"manifest for (?P<img3>\S{1,300}) not found",
        r"failed to resolve source metadata for (?P<img4>\S{1,300})",
        r"failed to resolve reference \"(?P<img5>[^\"]{1,300})\"",
        r"failed to create LLB definition: (?P<img6>[^\s:]{1,300}:[\w.-]{1,128}): not found",
        r"Unable to find image '(?P<img>[^']{1,300})' locally",
        r"error pulling image configuration",
        r"repository does not exist",
        r"manifest unknown",
        r"failed to authorize: [^\n]{0,200}",
        r"failed to do request: Head \"[^\"]{1,500}/v2/[^\"]{1,500}/manifests/",
        r"^Get \"https?://[^\"/]{1,300}/v2/\": [^\n]{1,200}"),
         _image_not_found, words=("image", "pull access", "manifest", "source metadata",
                                  "resolve reference", "llb definition", "repository does not",
                                  "failed to authorize", "failed to do request", "/v2/")),
    Rule("build-command-failed", _r(
        r"The command '(?P<cmd>[^\n]{1,1000}?)' returned a non-zero code: (?P<code>\d{1,3})",
        r"process \"(?P<cmd2>[^\n]{1,1000}?)\" did not complete successfully: exit code: "
        r"(?P<code2>\d{1,3})",
        r"executor failed running \[(?P<cmd3>[^\n]{1,1000}?)\]: exit code: (?P<code3>\d{1,3})"),
         _build_command, words=("returned a non-zero code", "did not complete successfully",
                                "executor failed running")),
    Rule("container-exited", _r(
        r"(?P<exec1>executable file not found in \$PATH)",
        r"(?P<exec2>exec format error)",
        r"(?P<exec3>\[FATAL tini \(\d{1,10}\)\] exec \S{1,300} failed: [^\n]{1,100})",
        r"(?P<exec4>OCI runtime (?:create|start|exec) failed: [^\n]{0,300}?"
        r"(?:no such file or directory|permission denied))",
        r"(?P<exec5>^exec \S{1,300}: (?:no such file or directory|permission denied))",
        r"status=(?:exited|restarting|dead|created) exit_code=(?P<code>[1-9]\d{0,2})",
        r"status=\w{1,20} exit_code=(?P<code0>\d{1,3}) oom_killed=false "
        r"restarts=(?P<restarts>[1-9]\d{0,6})",
        r"\bExited \((?P<code2>[1-9]\d{0,2})\)",
        r"\"ExitCode\":\s{0,3}(?P<code3>[1-9]\d{0,2})"),
         _container_exited, words=("executable file not found", "exec format", "tini",
                                   "oci runtime", "exec ", "exit_code=", "exited (",
                                   "\"exitcode\"")),
    Rule("health-check-failed", _r(
        r"service (?P<service>[a-z0-9-]{1,40}) did not become healthy within [^(\n]{1,50}"
        r"\(last probe: (?P<probe>[^\n]{0,400}?)\);",
        r"curl: \((?:7|22|28|52|56)\) [^\n]{1,300}",
        r"wget: server returned error: [^\n]{1,200}",
        r"wget: can't connect to remote host[^\n]{0,200}",
        r"(?:^|\d\d:\d\d:\d\d )ERROR [45]\d\d: [^\n]{1,200}",
        r"^Connecting to \S{1,300}\.\.\. failed: [^\n]{1,200}",
        r"\(unhealthy\)",
        r"container \S{1,200} is unhealthy"),
         _health, words=("did not become healthy", "curl: (", "wget: ", "error 4", "error 5",
                         "unhealthy", "... failed: ")),
)


def _readable(text: str) -> list[str]:
    """The lines diagnosis reads: without terminal colours, each at most LINE_CHARS long
    (its head and end), the first line and the last MAX_LINES - 1."""
    first, newline, rest = text.partition("\n")
    # the last lines without splitting all of them (a flood of empty lines costs nothing)
    last = rest.rsplit("\n", MAX_LINES - 1)[-(MAX_LINES - 1):] if newline else []
    lines = [first, *last]
    half = LINE_CHARS // 2
    out = []
    for line in lines:
        if len(line) > LINE_CHARS:
            line = line[:half] + " ... " + line[-half:]
        out.append(_ANSI.sub("", line).rstrip("\r"))
    return out


def _scoped_kinds(step: str) -> tuple[str, ...]:
    """The kinds of scoped rules the step declares (its StepSpec.diagnosis)."""
    from deploy_runs.steps import spec_of

    spec = spec_of(step)
    return spec.diagnosis if spec is not None else ()


def diagnose(text: str, step: str | None = None, *,
             app: Application | None = None) -> list[Suggestion]:
    """Suggested fixes for a failure, most specific first, from the failing command's output
    and error text. `step` narrows rules that only make sense in one step; `app` (optional)
    lets the detail name the exact setting to change. Nothing recognised: [].

    Time is linear in the text's size: only a bounded part of it is read (`_readable`), and
    every rule is a bounded match on one line."""
    lines = _readable(text)
    lowered = [line.lower() for line in lines]
    found: list[Suggestion] = []
    for rule in RULES:
        if rule.scoped and step is not None and rule.kind not in _scoped_kinds(step):
            continue
        if any(s.kind == rule.kind for s in found):
            continue
        for line, low in zip(lines, lowered, strict=True):
            match = rule.search(line, low)
            if match is None:
                continue
            title, detail = rule.explain(match, app, lines)
            found.append(Suggestion(kind=rule.kind, title=title, detail=detail,
                                    evidence=line.strip()[:500]))
            break
    return found


# --- the headline: what broke, in one line -----------------------------------------------

# Lines that never say what broke: usage hints, notices, advice printed after an error
_NOT_A_CAUSE = re.compile(
    r"(?:See|Run) 'docker [\w -]{1,40} ?--help'|^Please make sure you have the correct access"
    r"|^and the repository exists|^DEPRECATED:|Install the buildx component"
    r"|docs\.docker\.com/go/buildx|^hint: |^For more information|^Usage: |^-{3,}$"
    r"|^\s*>|^\s*\d+ \|", re.IGNORECASE)
_ERRORISH = re.compile(
    r"\b(?:error|fatal|failed|failure|denied|cannot|can't|could not|couldn't|unable"
    r"|not found|no such|refused|invalid|killed|panic|exception|timed out|exit code)\b",
    re.IGNORECASE)
# BuildKit's plain progress prefix ("#12 0.345 ", "#12 ERROR: ") and buildx's "ERROR: "
_PROGRESS_PREFIX = re.compile(r"^#\d{1,6} (?:\d{1,7}\.\d{1,4} )?(?:ERROR: )?|^ERROR: ")


def cause_line(lines: list[str], step: str | None = None, *,
               app: Application | None = None) -> str | None:
    """The line of a failure's output that shows what broke: the evidence of the first
    diagnosis when there is one, else the last line that reads as an error (never a usage
    hint or a notice); None when no line does. Cut to 300 characters."""
    readable = _readable("\n".join(lines))
    found = diagnose("\n".join(readable), step, app=app)
    line = found[0].evidence if found else next(
        (text for text in reversed(readable)
         if text.strip() and not _NOT_A_CAUSE.search(text) and _ERRORISH.search(text)), None)
    if line is None:
        return None
    line = _PROGRESS_PREFIX.sub("", line.strip()).strip()
    return line if len(line) <= 300 else line[:297] + "..."


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
    first_line = failure.message[:LINE_CHARS].split("\n", 1)[0] if failure.message else ""
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
