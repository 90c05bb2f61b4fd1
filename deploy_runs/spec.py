"""The YAML app spec: validated at the edge, then saved as an `Application` block and the app's
Prefect deployment. A bad spec is refused before anything is saved, naming the field.

    name: hello
    repository: git://127.0.0.1:9418/hello.git
    branch: main
    server: sandbox-local          # an SSHServer block name (or `servers: [a, b]`: each step
                                   # runs on every server in turn)
    services:
      - name: web
        container_port: 8080
        host_port: 18080
        env: {GREETING: hello}
        secret_env: {API_TOKEN: ${HELLO_API_TOKEN}}   # read from the environment of `apps add`
        health_check: {type: http, path: /, timeout: 30}
        memory: 256m                 # optional container memory limit
        # hardened by default; each may be changed per service:
        # no_new_privileges: true, pids_limit: 4096, log_rotation: {max_size: 10m, max_files: 5}
    timeouts: {build: 900, run: 1800}  # optional, seconds (defaults in blocks.Timeouts)
    log_limit_mb: 100                # optional: most output stored per step; past it, counted
    concurrency: queue               # queue (default) | replace | reject: one active run per app
    require_worker_seconds: 60       # optional: refuse a deploy when no worker asked for runs lately
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from blocks import Application, Service, SSHServer
from blocks.application import NAME_PATTERN, URL_PATTERN, ConcurrencyPolicy, Timeouts
from deploy_runs.errors import ConfigError

WORK_POOL = "deploy-runs"
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class ServiceSpec(Service):
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="Secret environment variables; a value `${NAME}` is read from the environment.",
    )


class AppSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    repository: str
    branch: str = "main"
    url: str | None = Field(None, pattern=URL_PATTERN, max_length=500,
                            description="The app's public URL, linked from notifications.")
    server: str | None = Field(None, min_length=1,
                               description="Name of the SSHServer block to deploy to.")
    servers: list[str] | None = Field(
        None, min_length=1,
        description="Names of SSHServer blocks to deploy to, instead of `server`: every step "
                    "runs on each, in this order.")
    services: list[ServiceSpec] = Field(min_length=1)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    log_limit_mb: float = Field(100, gt=0, le=100_000,
                                description="Most command output stored per step, in MB.")
    keep_releases: int = Field(5, ge=1, le=1000,
                               description="Releases kept on the servers (older ones pruned).")
    build_parallelism: int | None = Field(None, ge=1, le=64,
                                          description="Images built at the same time.")
    proxy: bool = Field(True, description="Serve HTTP services through the server's "
                                          "reverse proxy (zero-downtime switch).")
    drain_seconds: float = Field(30, ge=0, le=3600,
                                 description="Most seconds an old container finishes requests.")
    concurrency: ConcurrencyPolicy = "queue"
    require_worker_seconds: float | None = Field(
        None, gt=0, description="Refuse a deploy at once when no worker has asked the app's "
                                "work pool for runs for this many seconds.")


    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> AppSpec:
        if (self.server is None) == (self.servers is None):
            raise ValueError("give either `server` (one) or `servers` (a list), not "
                             + ("both" if self.server else "neither"))
        if self.servers and len(set(self.servers)) != len(self.servers):
            raise ValueError("servers: a server is named twice")
        return self

    @property
    def server_names(self) -> list[str]:
        return [self.server] if self.server else list(self.servers or [])


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "spec"
        message = error["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {message}")
    return out


def parse_spec(data: Any, source: str | None = None) -> AppSpec:
    if not isinstance(data, dict):
        raise ConfigError(["spec: expected a mapping at the top level"], source)
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None


def load_spec(path: str | Path) -> AppSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"], str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    return parse_spec(data, str(path))


def _resolve_secret(field: str, value: str, environ: dict[str, str]) -> str:
    match = _ENV_REF.match(value.strip())
    if not match:
        return value
    name = match.group(1)
    if name not in environ:
        raise ConfigError([f"{field}: environment variable {name} is not set"])
    return environ[name]


def to_application(spec: AppSpec, server: SSHServer,
                   environ: dict[str, str] | None = None) -> Application:
    environ = dict(os.environ) if environ is None else environ
    secrets: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for i, service in enumerate(spec.services):
        for name, value in service.secret_env.items():
            try:
                secrets.setdefault(service.name, {})[name] = _resolve_secret(
                    f"services.{i}.secret_env.{name}", value, environ)
            except ConfigError as exc:
                problems += exc.problems
    if problems:
        raise ConfigError(problems)
    try:
        return Application(
            name=spec.name, repository=spec.repository, branch=spec.branch, url=spec.url,
            server=server,
            services=[Service.model_validate(s.model_dump(exclude={"secret_env"}))
                      for s in spec.services],
            secret_env=secrets, timeouts=spec.timeouts, log_limit_mb=spec.log_limit_mb,
            concurrency=spec.concurrency, keep_releases=spec.keep_releases,
            proxy=spec.proxy, drain_seconds=spec.drain_seconds,
            build_parallelism=spec.build_parallelism,
            require_worker_seconds=spec.require_worker_seconds, more_servers=spec.server_names[1:],
        )
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def load_server(name: str, field: str = "server") -> SSHServer:
    try:
        return SSHServer.load(name)
    except ValueError:
        raise ConfigError([
            f"{field}: no SSH server block named {name!r} "
            "(save one with `deploy-runs sandbox up --save` or SSHServer(...).save(NAME))"
        ]) from None


def application_from_file(path: str | Path) -> Application:
    """Validate a spec file completely (including the server it names) without saving anything."""
    spec = load_spec(path)
    problems: list[str] = []
    servers = []
    for i, name in enumerate(spec.server_names):
        try:
            servers.append(load_server(name, "server" if spec.server else f"servers.{i}"))
        except ConfigError as exc:
            problems += exc.problems
    try:
        if problems:
            raise ConfigError(problems)
        return to_application(spec, servers[0])
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None


def register(app: Application) -> None:
    """Save the application block and create (or update) its Prefect deployment. (Its
    one-run-at-a-time concurrency limit is created by its first run.) The app's config key
    is kept from the block saved before, else made: a new key would change every
    configuration hash, and so replace every container at the next deploy."""
    if app.config_key is None:
        with contextlib.suppress(ValueError):  # ValueError: no such block yet
            app.config_key = Application.load(app.name).config_key
        if app.config_key is None:
            app.config_key = SecretStr(token_urlsafe(32))
    app.save(app.name, overwrite=True)
    ensure_deployment(app.name)


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """The process work pool, and the automation that ends runs whose process died."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from deploy_runs.heartbeat import ensure_crash_automation

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    ensure_crash_automation()


def ensure_deployment(app: str) -> None:
    from prefect.deployments.runner import EntrypointType

    from deploy_runs.heartbeat import HEARTBEAT_ENV
    from deploy_runs.run_record.facts import RUN_TAG, app_tag
    from flows.deploy import deploy_app

    ensure_work_pool()
    deployment = deploy_app.to_deployment(
        name=app,
        parameters={"app": app},
        tags=[RUN_TAG, app_tag(app)],
        description=f"Deploy {app} (deploy-runs).",
        entrypoint_type=EntrypointType.MODULE_PATH,
        # heartbeats every 30 s also on workers deploy-runs did not start (see heartbeat.py)
        job_variables={"env": HEARTBEAT_ENV},
    )
    deployment.apply(work_pool_name=WORK_POOL)


def list_applications() -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(Application.get_block_type_slug())
    return sorted(d.name for d in documents if d.name)
