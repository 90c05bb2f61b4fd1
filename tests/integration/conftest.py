"""Real parts for integration tests, started once per session by the project's own code.

- the sandbox (`deploy_runs.sandbox`): sshd on 127.0.0.1:2222 + Docker engine + git daemon;
- a Prefect server on a free port with its own SQLite database (or DEPLOY_RUNS_TEST_API_URL);
- a process worker for the deploy-runs work pool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks import Application
from deploy_runs import DeployRuns, sandbox
from deploy_runs.gitrepo import publish
from deploy_runs.prefect_local import (
    FLOW_SETTINGS,
    sqlite_database,
    start_server,
    start_worker,
    stop,
)
from deploy_runs.sandbox_blocks import save_server_blocks
from deploy_runs.spec import load_server, parse_spec, register, to_application

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# The sandbox server each builder is reached by: the legacy builder (`sandbox-local`) and
# BuildKit (`sandbox-buildkit`, the default builder of Docker 23 and later). Tests marked
# `builds` (their outcome depends on how images are built) run once with each; the others
# deploy to `sandbox-local`.
BUILDER_SERVERS = {"legacy": "sandbox-local", "buildkit": "sandbox-buildkit"}
_builder = {"name": "legacy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("builds"):
        metafunc.parametrize("builder", list(BUILDER_SERVERS), indirect=True)


@pytest.fixture(autouse=True)
def builder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which builder this test's apps build with (see BUILDER_SERVERS)."""
    _builder["name"] = getattr(request, "param", "legacy")
    yield _builder["name"]
    _builder["name"] = "legacy"


def current_builder() -> str:
    return _builder["name"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, answer.read().decode()


@pytest.fixture(scope="session")
def sandbox_info() -> sandbox.SandboxInfo:
    sandbox.install()
    return sandbox.up()


@pytest.fixture(scope="session")
def prefect_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect")


@pytest.fixture(scope="session")
def prefect_api(prefect_state: Path) -> Iterator[str]:
    url = os.environ.get("DEPLOY_RUNS_TEST_API_URL")
    started = not url
    if started:
        url = start_server(free_port(), state=prefect_state)
        # the fresh, migrated database, before any test writes to it: the tests' other local
        # servers start from a copy (4-5 s) instead of migrating an empty one (12-13 s)
        with contextlib.closing(sqlite3.connect(sqlite_database(prefect_state))) as live, \
                contextlib.closing(sqlite3.connect(prefect_state / MIGRATED)) as copy:
            live.backup(copy)
    os.environ["PREFECT_API_URL"] = url  # for the worker and CLI subprocesses
    os.environ.update(FLOW_SETTINGS)  # for flows run in-process by the tests' subprocesses
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
    if started:
        stop(prefect_state)


MIGRATED = "migrated.db"  # in the session server's state: its database as it started


@pytest.fixture(scope="session")
def migrated_database(prefect_api: str, prefect_state: Path) -> Callable[[Path], Path]:
    """Factory: a directory for start_server holding a copy of the session server's database
    as it was when that server had started (migrated, no test's data), when there is one."""
    def seeded(state: Path) -> Path:
        state.mkdir(parents=True, exist_ok=True)
        if (prefect_state / MIGRATED).exists():
            sqlite_database(state).parent.mkdir(exist_ok=True)
            shutil.copyfile(prefect_state / MIGRATED, sqlite_database(state))
        return state
    return seeded


@pytest.fixture(scope="session")
def worker(prefect_api: str, prefect_state: Path) -> int:
    return start_worker(prefect_api, state=prefect_state)


@pytest.fixture(scope="session")
def server_blocks(sandbox_info: sandbox.SandboxInfo, prefect_api: str) -> list[str]:
    return save_server_blocks(sandbox_info)


@pytest.fixture(scope="session")
def client(prefect_api: str) -> DeployRuns:
    return DeployRuns()


@dataclass
class SampleApp:
    """A sample application made for one test: its own name, git repository and ports."""

    name: str
    source: Path
    bare_repo: Path
    application: Application
    commits: list[str] = field(default_factory=list)
    address: str = "127.0.0.1"  # where the app's server publishes its ports

    @property
    def ports(self) -> dict[str, int]:
        return {s.name: s.host_port for s in self.application.services}

    def url(self, service: str | None = None) -> str:
        service = service or self.application.services[0].name
        return f"http://{self.address}:{self.ports[service]}/"

    def push(self, files: dict[str, str], message: str) -> str:
        """Change files of the app's source and push them as a new commit."""
        for path, content in files.items():
            target = self.source / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        sha = publish(self.source, self.bare_repo, message)
        self.commits.append(sha)
        return sha


@pytest.fixture(scope="session")
def docker_client(sandbox_info: sandbox.SandboxInfo) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=sandbox_info.host("local").docker_host)
    yield client
    client.close()


@pytest.fixture(scope="session")
def make_app(sandbox_info, server_blocks, worker, docker_client, tmp_path_factory):
    """Factory: a copy of an example (with files changed or added), published as a real git
    repository in the sandbox, saved as an Application block with its deployment."""
    made: list[SampleApp] = []

    def make(example: str = "hello", files: dict[str, str] | None = None,
             spec_changes: dict | None = None, server: str | None = None) -> SampleApp:
        server = server or BUILDER_SERVERS[current_builder()]
        name = f"t-{example}-{uuid.uuid4().hex[:6]}"
        source = tmp_path_factory.mktemp(name) / "src"
        shutil.copytree(EXAMPLES / example, source)
        spec = yaml.safe_load((source / "app.yaml").read_text())
        bare = sandbox_info.git_dir / f"{name}.git"
        spec.update(spec_changes or {})
        # a sandbox host clones from the git daemon at the address it reaches it by
        server = (spec_changes or {}).get("servers", [server])[0]
        target = load_server(server)
        host = next((h for h in sandbox.status().hosts if h.host == target.host),
                    sandbox_info.host("local"))
        spec.update(name=name, repository=f"{host.git_base_url}{name}.git")
        if "servers" in spec:
            spec.pop("server", None)
        else:
            spec["server"] = server
        for service in spec["services"]:
            service["host_port"] = free_port()
            check = service.setdefault("health_check", {})
            check["timeout"] = min(check.get("timeout", 15), 15)
        application = to_application(parse_spec(spec), target, environ={})
        register(application)
        app = SampleApp(name, source, bare, application, address=target.host)
        app.push(files or {}, f"{name}: first commit")
        made.append(app)
        return app

    yield make
    # every engine of the sandbox (namespace hosts have their own): one listing each
    engines = [docker_client] + [docker.DockerClient(base_url=h.docker_host)
                                 for h in sandbox.status().hosts if h.name != "local"]
    names = {app.name for app in made}
    left = []
    for engine in engines:
        with contextlib.suppress(docker.errors.DockerException):  # an engine a test stopped
            left += [c for c in engine.containers.list(all=True,
                                                       filters={"label": "deploy-runs.app"})
                     if c.labels.get("deploy-runs.app") in names]

    def remove(container) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)

    # a session leaves a container or two per app: removed side by side, not one at a time
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, left))
    for app in made:
        shutil.rmtree(app.bare_repo, ignore_errors=True)
    for engine in engines[1:]:
        engine.close()


def _marked(marker: str) -> dict[int, str]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found[int(proc.name)] = cmdline.strip()
    return found


def server_processes(marker: str) -> list[str]:
    """Command lines of processes on the sandbox server (this machine) that contain `marker`."""
    return list(_marked(marker).values())


@contextlib.contextmanager
def held(marker: str, timeout: float = 90) -> Iterator[list[int]]:
    """Hold the command carrying `marker` on the sandbox's servers (their processes run on
    this machine) for the block: stopped with SIGSTOP, it cannot end, so neither can its step,
    until the block ends (SIGCONT). A control that must land while a step runs waits on this
    state instead of on a build lasting long enough."""
    pids = list(wait_for(lambda: _marked(marker), timeout, f"a command with {marker} to run"))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def slow_build_files(seconds: int, marker: str) -> dict[str, str]:
    """A Dockerfile whose build runs one slow command, findable on the server by `marker`."""
    return {"Dockerfile": (
        "FROM busybox:latest\n"
        f"RUN sleep {seconds} && echo {marker}\n"  # the marker also keeps the layer uncached
        "COPY site/ /www/\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')}


def deployment_on_own_pool(app: SampleApp, kind: str) -> tuple[str, object]:
    """A deployment of `app`'s deploy flow on a process work pool of its own (`kind-xxxxxx`),
    for a test that serves it with a worker it starts itself; (pool, deployment id)."""
    from prefect.deployments.runner import EntrypointType

    from deploy_runs.heartbeat import HEARTBEAT_ENV
    from deploy_runs.spec import ensure_work_pool
    from flows.deploy import deploy_app

    pool = f"{kind}-{uuid.uuid4().hex[:6]}"
    ensure_work_pool(pool)
    deployment_id = deploy_app.to_deployment(
        name=f"{app.name}-{kind}", parameters={"app": app.name},
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables={"env": HEARTBEAT_ENV}).apply(work_pool_name=pool)
    return pool, deployment_id


class WebhookReceiver:
    """A real HTTP server on loopback that keeps every JSON body posted to it, by path: the
    receiving end of Prefect's custom webhook notification block."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.received: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append((self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def block(self, path: str) -> str:
        """A custom webhook notification block posting {subject, body} to `path`; TYPE/NAME."""
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        name = f"t-hook-{uuid.uuid4().hex[:8]}"
        CustomWebhookNotificationBlock(
            name=name, url=f"http://127.0.0.1:{self.port}{path}",
            json_data={"subject": "{{subject}}", "body": "{{body}}"}).save(name)
        return f"custom-webhook/{name}"

    def at(self, path: str) -> list[dict]:
        with self._lock:
            return [body for p, body in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def webhook_receiver(prefect_api: str) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def crash_watch(client, make_app, prefect_api, tmp_path_factory, webhook_receiver):
    """A run whose worker is killed, watched in a thread (test_never_hang.CrashWatch)."""
    from .test_never_hang import CrashWatch

    return CrashWatch.start(client, make_app, prefect_api, tmp_path_factory.mktemp("doomed"),
                            webhook_receiver)


@pytest.fixture(scope="session", autouse=True)
def _a_crash_watched_from_the_start(request: pytest.FixtureRequest) -> None:
    """When test_never_hang is among the tests, its two minutes of waiting for Prefect's
    heartbeats to run out overlap the tests that come before it."""
    if any("test_never_hang.py" in item.nodeid for item in request.session.items):
        request.getfixturevalue("crash_watch")
