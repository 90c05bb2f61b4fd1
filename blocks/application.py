"""An application: where its code lives, which server runs it, and its services.

Every value here may end up on a remote command line, so names, paths and refs are validated
against strict patterns at the edge (and everything is still quoted when a command is built).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import PurePosixPath
from typing import Literal

from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.ssh_server import SSHServer

ConcurrencyPolicy = Literal["queue", "replace", "reject"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
REF_PATTERN = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}$")
REPOSITORY_PATTERN = re.compile(r"^(?!-)[A-Za-z0-9._~:/@%+=,-]{1,500}$")


def has_credentials(url: str) -> bool:
    """True for a URL with a password (`scheme://user:secret@host/...`), or any user part on
    http(s), where it is a token (`https://TOKEN@host/...`). A plain SSH user
    (`ssh://git@host/...`, `git@host:org/repo.git`) is not a credential."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return False
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if not at:
        return False
    return ":" in userinfo or scheme.lower() in ("http", "https")


def check_ref(value: str) -> str:
    """A git branch, tag or commit that is safe on a command line."""
    if not REF_PATTERN.fullmatch(value):  # fullmatch: `$` would let a final newline in
        raise ValueError(f"{value!r} is not a valid git ref (letters, digits, '._/-'; "
                         "not starting with '-', no '..')")
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or value.startswith("-"):
        raise ValueError("must be a path inside the repository (relative, no '..')")
    if any(ch in value for ch in "\n\r\t\0"):
        raise ValueError("must not contain control characters")
    return str(path)


class HealthCheck(BaseModel):
    """How to tell that a service is up: an HTTP request or a TCP connect, from the server."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["http", "tcp"] = Field("http", description="`http` (GET `path`) or `tcp`.")
    path: str = Field("/", pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%?-]*$",
                      description="HTTP path to GET (http only).")
    expected_status: int = Field(200, ge=100, le=599, description="HTTP status that means healthy.")
    timeout: float = Field(60.0, gt=0, le=3600,
                           description="Seconds to keep probing before the check fails.")
    interval: float = Field(0.5, gt=0, le=60, description="Seconds between probes.")


class LogRotation(BaseModel):
    """How much of a container's output Docker keeps on the server (json-file driver)."""

    model_config = ConfigDict(extra="forbid")

    max_size: str = Field("10m", pattern=r"^[1-9][0-9]{0,8}[kmg]$",
                          description="Size of one log file before it is rotated (e.g. `10m`).")
    max_files: int = Field(5, ge=1, le=100, description="How many log files are kept.")

URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&\'()*+,;=:@/%?#-]*)?$"


class Timeouts(BaseModel):
    """How long each step (and the whole run) may take; past it, the running command is
    killed on the server and the step fails with `command-timeout`. Seconds."""

    model_config = ConfigDict(extra="forbid")

    provision: float = Field(300, gt=0, le=86400, description="Provision server.")
    fetch: float = Field(600, gt=0, le=86400, description="Fetch source.")
    build: float = Field(1800, gt=0, le=86400, description="Build images (all services).")
    start: float = Field(300, gt=0, le=86400, description="Start application.")
    health: float = Field(600, gt=0, le=86400,
                          description="Health check (all services; each service's own "
                                      "health_check.timeout applies within it).")
    run: float = Field(3600, gt=0, le=7 * 86400,
                       description="The whole run, not counting time spent paused.")



class Service(BaseModel):
    """One container of the application, built from a Dockerfile in the repository."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Service name (lowercase, digits, '-').")
    context: str = Field(".", description="Build context directory, relative to the repository.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile path, relative to the repository.")
    container_port: int = Field(ge=1, le=65535, description="Port the service listens on inside.")
    host_port: int = Field(ge=1, le=65535, description="Port published on the server.")
    build_args: dict[str, str] = Field(default_factory=dict,
                                       description="Docker build arguments (not secret).")
    env: dict[str, str] = Field(default_factory=dict,
                                description="Environment variables (not secret; shown in logs).")
    health_check: HealthCheck = Field(default_factory=HealthCheck,
                                      description="How to tell the service is healthy.")
    memory: str | None = Field(None, pattern=r"^[1-9][0-9]{0,8}[bkmg]?$",
                               description="Memory limit of the container (e.g. `256m`); "
                                           "exceeding it gets the container OOM-killed. "
                                           "None: no limit.")

    no_new_privileges: bool = Field(
        True, description="Start the container with `--security-opt no-new-privileges` (its "
                          "processes cannot gain privileges, e.g. through setuid programs).")
    pids_limit: int | None = Field(
        4096, ge=16, le=4_194_304,
        description="Most processes the container may run (`--pids-limit`: a fork bomb stops "
                    "there). None: no limit.")
    log_rotation: LogRotation | None = Field(
        default_factory=LogRotation,
        description="The container's output is kept in rotated files (Docker's json-file "
                    "driver with max-size and max-file) so it cannot fill the server's disk. "
                    "None: the engine's own log settings.")

    @field_validator("context", "dockerfile")
    @classmethod
    def _inside_repository(cls, value: str) -> str:
        return _relative_path(value)

    @field_validator("env", "build_args")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env(env)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not re.fullmatch(ENV_NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if "\n" in str(value) or "\0" in str(value):
            raise ValueError(f"the value of {name} must be a single line")
    return env


class Application(Block):
    """An application deploy-runs deploys: a git repository, a server and the services to run.

    Usually written as a YAML app spec and saved with `deploy-runs apps add app.yaml`.

    Example:
        ```python
        from blocks import Application, Service, SSHServer

        Application(
            name="hello",
            repository="https://git.example.com/acme/hello.git",
            branch="main",
            server=SSHServer.load("prod-1"),
            services=[Service(name="web", container_port=8080, host_port=80)],
        ).save("hello")
        ```
    """

    # a refused value is not repeated in the error: it may hold a secret (e.g. in the URL)
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Deploy Runs Application"
    _block_type_slug = "deploy-runs-application"
    _description = "An application that deploy-runs deploys to a server over SSH and Docker."

    name: str = Field(pattern=NAME_PATTERN, description="Application name (lowercase, digits, '-').")
    repository: str = Field(description="Git repository URL the server clones from.")
    branch: str = Field("main", description="Branch whose head is deployed when no ref is given.")
    url: str | None = Field(None, pattern=URL_PATTERN, max_length=500,
                            description="The application's public URL (http or https), linked "
                                        "from its run notifications. None: not linked.")
    server: SSHServer = Field(description="The server the application is deployed to.")
    more_servers: list[str] = Field(
        default_factory=list,
        description=(
            "Names of further SSHServer blocks to deploy to as well. Each step runs on every "
            "server in turn and fails if any server fails. (Names, not nested blocks: Prefect "
            "does not hide secret fields of blocks nested in a list.)"
        ),
    )
    services: list[Service] = Field(min_length=1, description="The services (containers) to run.")
    timeouts: Timeouts = Field(default_factory=Timeouts,
                               description="Per-step and whole-run time limits (seconds).")
    log_limit_mb: float = Field(
        100, gt=0, le=100_000,
        description=(
            "Most command output stored per step, in MB (million characters). Past it, lines "
            "are counted, not stored, and the step's log says how many; the command keeps "
            "running."
        ),
    )
    keep_releases: int = Field(
        5, ge=1, le=1000,
        description="Releases (Completed runs' images) kept on the servers: after a Completed "
                    "run the images and stopped containers of older ones are removed.")
    build_parallelism: int | None = Field(
        None, ge=1, le=64,
        description="How many of the services' images are built at the same time on a "
                    "server (unset: all that need building). 1 builds one after another.")
    proxy: bool = Field(
        True,
        description=(
            "Serve the HTTP services' public ports through the server's reverse proxy, so "
            "that a new container takes the traffic only once healthy, with no request lost "
            "(zero-downtime switch). Off: each container publishes its host_port itself, and "
            "a replaced container leaves a short gap. TCP services always publish directly."
        ),
    )
    drain_seconds: float = Field(
        30, ge=0, le=3600,
        description="After a switch, the most seconds the old container is given to finish "
                    "the requests it has in flight before it is stopped.")
    concurrency: ConcurrencyPolicy = Field(
        "queue",
        description=(
            "One run of the application is active at a time. A deploy requested while one is "
            "active: `queue` waits (Started) until it ends; `replace` also stops older runs "
            "still waiting, so the latest request wins; `reject` is refused, naming the "
            "active run."
        ),
    )
    require_worker_seconds: float | None = Field(
        None, gt=0,
        description=(
            "Refuse a deploy at once (NoWorker) when no worker has asked the application's "
            "work pool for runs for this many seconds. Unset: the run waits, Started and "
            "saying that no worker serves the pool, until a worker comes."
        ),
    )
    config_key: SecretStr | None = Field(
        None,
        description=(
            "Random key of this application's configuration hashes: secret values are hashed "
            "with it (HMAC), so a hash seen in a log or a container label cannot be used to "
            "test guesses of a secret. Made when the app is registered from a spec and kept "
            "across re-registrations; without one, a key derived from the server's private "
            "key is used."
        ),
    )
    secret_env: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description=(
            "Secret environment variables per service: {service: {NAME: value}}. "
            "Written to the server in a 0600 env file; never logged or shown."
        ),
    )

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not REPOSITORY_PATTERN.fullmatch(value):
            # not echoed either: a URL that is refused may still hold a token
            raise ValueError("not a git repository URL deploy-runs accepts (letters, digits and "
                             "._~:/@%+=,- only, at most 500 characters, not starting with '-')")
        if has_credentials(value):
            # not echoed: the value holds a secret
            raise ValueError("the URL holds credentials (a password, or in an http(s) URL any "
                             "name before '@', where tokens go), which every run's log would "
                             "show and the checkout on the server would keep; give the server "
                             "access instead (an SSH deploy key, or a git credential helper)")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        return check_ref(value)

    @model_validator(mode="after")
    def _consistent(self) -> Application:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"services: duplicate service name(s): {', '.join(dupes)}")
        extra = [n for n in self.more_servers if not n.strip()]
        if extra or len(set(self.more_servers)) != len(self.more_servers):
            raise ValueError("more_servers: names must be non-empty and different")
        ports = [s.host_port for s in self.services]
        taken = sorted({p for p in ports if ports.count(p) > 1})
        if taken:
            raise ValueError(f"services: host_port used twice: {', '.join(map(str, taken))}")
        secrets = self.secret_env.get_secret_value()
        for service, values in secrets.items():
            if service not in names:
                raise ValueError(f"secret_env: {service!r} is not a service of this application")
            if not isinstance(values, dict):
                raise ValueError(f"secret_env.{service}: expected a mapping NAME: value")
            _check_env({k: str(v) for k, v in values.items()})
        return self

    def secrets_digest(self, service: str) -> str:
        """A keyed hash (HMAC-SHA256) of a service's secret values: equal while they are,
        and no help to someone guessing them without the key (`config_key`)."""
        if self.config_key is not None:
            key = self.config_key.get_secret_value().encode()
        else:
            key = hashlib.sha256(b"deploy-runs config key\0"
                                 + self.server.private_key.get_secret_value().encode()).digest()
        values = json.dumps(sorted(self.secrets_for(service).items()))
        return hmac.new(key, values.encode(), hashlib.sha256).hexdigest()

    def secrets_for(self, service: str) -> dict[str, str]:
        values = self.secret_env.get_secret_value().get(service) or {}
        return {name: str(value) for name, value in values.items()}
