"""The Prefect API locked with Prefect's own authentication, against a real server: a second
local server started by `start_server` with an auth string (PREFECT_SERVER_API_AUTH_STRING),
attacked with raw HTTP requests that lack it, and used by Prefect's client, a worker and a real
deploy that have it (PREFECT_API_AUTH_STRING). Its CSRF protection is on and cross-origin
requests are allowed from its own UI only. A server asked to listen on all addresses without
an auth string refuses before binding.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_SERVER_API_AUTH_STRING,
    temporary_settings,
)

from blocks import SSHServer
from deploy_runs import DeployRuns, RunStatus
from deploy_runs.prefect_local import healthy, start_server, start_worker, stop
from deploy_runs.prefect_server import basic_authorization
from deploy_runs.sandbox_blocks import save_server_blocks

from .conftest import free_port, http_get, wait_for

pytestmark = pytest.mark.timeout(300)

AUTH = f"admin:{secrets.token_urlsafe(24)}"
PRIVATE_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
               f"not-a-real-key-{uuid.uuid4().hex}\n-----END OPENSSH PRIVATE KEY-----\n")
ENV_WITHOUT_AUTH = {k: v for k, v in os.environ.items()
                    if k not in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")}


@dataclass
class Locked:
    url: str
    state: Path
    flow_id: UUID
    deployment_id: UUID
    block_id: UUID


@contextmanager
def as_client(url: str, auth_string: str | None = AUTH) -> Iterator[None]:
    """Prefect's settings of a client of the locked server (with its auth string, or none).
    This process's Prefect events worker (client-side events, e.g. a block loaded) keeps the
    API and auth of its first use, whatever the settings later: it is drained (sent, stopped)
    on the way in and out, so that no event goes to the other server, and none to this one
    once it is stopped."""
    drain_events()
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth_string},
                            restore_defaults={PREFECT_SERVER_API_AUTH_STRING}):
        try:
            yield
        finally:
            drain_events()


def drain_events() -> None:
    if PREFECT_API_URL.value():  # without an API, instance() would start an ephemeral server
        EventsWorker.instance().drain()


def raw(url: str, method: str, path: str, body: object = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    """One request as anyone on the network could send it (no proxy from the environment)."""
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        return http.request(method, path, json=body, headers=headers or {})


def authorization(auth_string: str = AUTH) -> dict[str, str]:
    return {"Authorization": basic_authorization(auth_string).decode()}


def csrf_headers(url: str) -> dict[str, str]:
    """A valid CSRF token, fetched as Prefect's client fetches one (this needs the auth)."""
    client = str(uuid.uuid4())
    answer = raw(url, "GET", f"/csrf-token?client={client}", headers=authorization())
    assert answer.status_code == 200, answer.text
    return {"Prefect-Csrf-Token": answer.json()["token"], "Prefect-Csrf-Client": client}


@pytest.fixture(scope="module")
def locked(migrated_database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    """A second local Prefect server with the auth string, holding an SSHServer block (with a
    private key), a flow and a deployment - saved through Prefect's client with the string."""
    state = migrated_database(tmp_path_factory.mktemp("locked-api"))
    try:
        url = start_server(free_port(), state=state, auth_string=AUTH)
        with as_client(url), get_client(sync_client=True) as prefect:
            SSHServer(host="203.0.113.10", username="deploy", private_key=PRIVATE_KEY,
                      accept_unknown_host_key=True).save("prod-1", overwrite=True)
            block = prefect.read_block_document_by_name("prod-1", "deploy-runs-ssh-server")
            flow_id = prefect.create_flow_from_name("locked-flow")
            deployment_id = prefect.create_deployment(flow_id=flow_id, name="locked-deployment")
        yield Locked(url, state, flow_id, deployment_id, block.id)
    finally:
        stop(state)


def attacks(locked: Locked) -> dict[str, tuple[str, str, object]]:
    """What a stranger on the network would send: read every block with its secrets, create a
    deployment (code a worker would run), start a flow run."""
    return {
        "read blocks with secrets": ("POST", "/block_documents/filter",
                                     {"include_secrets": True}),
        "read one block with secrets": (
            "GET", f"/block_documents/{locked.block_id}?include_secrets=true", None),
        "create a deployment": ("POST", "/deployments/",
                                {"name": f"evil-{uuid.uuid4().hex[:6]}",
                                 "flow_id": str(locked.flow_id)}),
        "create a flow run": ("POST", "/flow_runs/", {"flow_id": str(locked.flow_id)}),
        "run a deployment": ("POST", f"/deployments/{locked.deployment_id}/create_flow_run", {}),
    }


def test_without_the_auth_string_nothing_is_read_or_created(locked: Locked):
    with as_client(locked.url), get_client(sync_client=True) as prefect:
        runs_before = len(prefect.read_flow_runs())
        deployments_before = len(prefect.read_deployments())
    csrf = csrf_headers(locked.url)  # even with a valid CSRF token (a stranger has none)
    strangers = {"no header": {}, "wrong password": authorization("admin:wrong"),
                 "a bearer key": {"Authorization": f"Bearer {AUTH}"}}
    for what, (method, path, body) in attacks(locked).items():
        for who, headers in strangers.items():
            answer = raw(locked.url, method, path, body, {**headers, **csrf})
            assert answer.status_code == 401, (what, who, answer.status_code, answer.text)
            assert PRIVATE_KEY.splitlines()[1] not in answer.text
            # without a CSRF token a change is refused before the auth is even looked at
            answer = raw(locked.url, method, path, body, headers)
            assert answer.status_code == (403 if method == "POST" else 401), (what, who)
            assert PRIVATE_KEY.splitlines()[1] not in answer.text
    # and a stranger cannot get a CSRF token
    assert raw(locked.url, "GET", f"/csrf-token?client={uuid.uuid4()}").status_code == 401
    with as_client(locked.url), get_client(sync_client=True) as prefect:
        assert len(prefect.read_flow_runs()) == runs_before
        assert len(prefect.read_deployments()) == deployments_before
    # the health probe stays open (start_server and load balancers use it)
    assert raw(locked.url, "GET", "/health").status_code == 200


def test_with_the_auth_string_the_same_requests_succeed(locked: Locked):
    headers = {**authorization(), **csrf_headers(locked.url)}
    for what, (method, path, body) in attacks(locked).items():
        answer = raw(locked.url, method, path, body, headers)
        assert answer.status_code in (200, 201), (what, answer.status_code, answer.text)
        if what.startswith("read"):  # what the lock protects: the key in clear
            assert PRIVATE_KEY.splitlines()[1] in answer.text
    # the auth alone is not enough for a change: Prefect's CSRF protection is on
    answer = raw(locked.url, "POST", "/flow_runs/", {"flow_id": str(locked.flow_id)},
                 authorization())
    assert answer.status_code == 403 and "CSRF" in answer.text


def test_the_ui_is_told_to_ask_for_the_password_and_csrf_is_on(locked: Locked):
    status, _ = http_get(locked.url.removesuffix("/api"))
    assert status == 200  # the UI's pages themselves are static
    settings = raw(locked.url.removesuffix("/api"), "GET", "/ui-settings").json()
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True
    assert settings["api_url"] == locked.url


def test_cross_origin_requests_only_from_the_servers_own_ui(locked: Locked):
    own = locked.url.removesuffix("/api")
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    for origin in (own, own.replace("127.0.0.1", "localhost")):
        answer = raw(locked.url, "OPTIONS", "/flow_runs/", headers={**preflight, "Origin": origin})
        assert answer.status_code == 200, (origin, answer.text)
        assert answer.headers["access-control-allow-origin"] == origin
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null"):
        answer = raw(locked.url, "OPTIONS", "/flow_runs/", headers={**preflight, "Origin": origin})
        assert answer.status_code == 400, (origin, answer.status_code)
        assert "access-control-allow-origin" not in answer.headers


def test_prefects_client_works_with_the_auth_string_only(locked: Locked):
    with as_client(locked.url), get_client(sync_client=True) as prefect:
        flow_run = prefect.create_flow_run_from_deployment(locked.deployment_id)  # CSRF too
        assert prefect.read_flow_run(flow_run.id).deployment_id == flow_run.deployment_id
        block = SSHServer.load("prod-1")
        assert block.private_key.get_secret_value() == PRIVATE_KEY
    with as_client(locked.url, auth_string=None), get_client(sync_client=True) as prefect:
        with pytest.raises(PrefectHTTPStatusError) as refused:
            prefect.read_flow_run(flow_run.id)
        assert refused.value.response.status_code == 401
    with as_client(locked.url, auth_string="admin:wrong"), \
            pytest.raises(PrefectHTTPStatusError) as refused:
        SSHServer.load("prod-1")
    assert refused.value.response.status_code == 401


def test_a_worker_started_with_the_auth_string_polls_the_locked_server(locked: Locked):
    pool = f"locked-{uuid.uuid4().hex[:6]}"
    with as_client(locked.url):
        pid = start_worker(locked.url, locked.state, name="locked-worker", pool=pool,
                           auth_string=AUTH)

        def heartbeat() -> object:
            with get_client(sync_client=True) as prefect:
                workers = prefect.read_workers_for_work_pool(pool)
            return [w for w in workers if w.last_heartbeat_time] or None

        workers = wait_for(heartbeat, timeout=60, what="the worker's heartbeat", interval=0.5)
    assert [w.name for w in workers] == ["deploy-runs-locked-worker"]
    time.sleep(2)  # it keeps polling: still alive, and never refused
    os.kill(pid, 0)
    log = (locked.state / "locked-worker.log").read_text()
    assert "Unauthorized" not in log and "CSRF" not in log, log[-2000:]


def test_a_deploy_runs_end_to_end_against_the_locked_server(locked: Locked, sandbox_info,
                                                           make_app, prefect_api: str):
    """Everything a deploy does - the worker, the flow's process (labels, logs, the app's
    concurrency slot, heartbeats), the Python API - with the auth string and CSRF on."""
    with as_client(locked.url):
        save_server_blocks(sandbox_info)
        app = make_app("hello")  # its Application block and deployment on the locked server
        start_worker(locked.url, locked.state, name="deploy-worker", auth_string=AUTH)
        runs = DeployRuns()
        run = runs.wait(runs.deploy(app.name).id, timeout=180)
        assert run.status is RunStatus.COMPLETED, run.error
        lines = list(runs.logs(run.id, step="Build images"))
    assert any(line.stream == "command" and line.text.startswith("$ docker build")
               for line in lines)
    status, page = http_get(app.url())
    assert status == 200 and "Hello from deploy-runs" in page
    # the run is on the locked server (not on the tests' shared one), shown with the string only
    assert raw(locked.url, "GET", f"/flow_runs/{run.id}", headers=authorization()).status_code == 200
    assert raw(locked.url, "GET", f"/flow_runs/{run.id}").status_code == 401
    assert raw(prefect_api, "GET", f"/flow_runs/{run.id}").status_code == 404
    # the CLI, as a user runs it on another machine: with the string it shows the run
    env = {**ENV_WITHOUT_AUTH, "PREFECT_API_URL": locked.url}
    show = [sys.executable, "-m", "deploy_runs.cli", "show", str(run.id)]
    shown = subprocess.run(show, env={**env, "PREFECT_API_AUTH_STRING": AUTH},
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "Completed" in shown.stdout, shown.stderr[-2000:]
    refused = subprocess.run(show, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr


def listening_on_all_addresses(port: int) -> bool:
    """Whether a socket listens on 0.0.0.0:`port` (read from /proc, no connection made)."""
    wanted = f"00000000:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # LISTEN
            return True
    return False


def test_the_server_refuses_all_addresses_without_an_auth_string(tmp_path):
    port = free_port()
    env = {**ENV_WITHOUT_AUTH, "PREFECT_HOME": str(tmp_path / "home")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "deploy_runs.prefect_server", "--host", "0.0.0.0",
                           "--port", str(port)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "PREFECT_SERVER_API_AUTH_STRING=" in done.stderr
    assert "PREFECT_API_AUTH_STRING" in done.stderr
    assert time.monotonic() - started < 30
    assert not listening_on_all_addresses(port)


def test_prefect_up_refuses_all_addresses_without_an_auth_string(tmp_path):
    port = free_port()
    env = {**ENV_WITHOUT_AUTH, "PREFECT_HOME": str(tmp_path / "home"),
           "DEPLOY_RUNS_HOME": str(tmp_path / "deploy-runs")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "prefect", "up",
                           "--host", "0.0.0.0", "--port", str(port)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())  # as printed, wrapped
    assert "refusing to serve the Prefect API on 0.0.0.0" in message
    assert "PREFECT_SERVER_API_AUTH_STRING=" in message
    assert not list((tmp_path / "deploy-runs").glob("prefect/*.pid"))  # nothing started
    assert not healthy(f"http://127.0.0.1:{port}/api")


def test_the_server_serves_all_addresses_with_an_auth_string(migrated_database, tmp_path):
    state = migrated_database(tmp_path / "open")
    port = free_port()
    try:
        url = start_server(port, state=state, host="0.0.0.0", auth_string=AUTH)
        assert url == f"http://127.0.0.1:{port}/api"
        assert listening_on_all_addresses(port)
        missing = f"/flows/{uuid.uuid4()}"
        assert raw(url, "GET", missing).status_code == 401
        assert raw(url, "GET", missing, headers=authorization()).status_code == 404
    finally:
        stop(state)


def test_the_prefect_ui_asks_for_the_auth_string_and_then_shows_the_server(locked: Locked):
    """The UI of a locked server, in headless Chromium: it asks for the auth string (Prefect's
    login page) and, given it, shows what the server holds."""
    from playwright.sync_api import expect

    from .test_ui import WAIT_MS, chromium_page, save_screenshot

    base = locked.url.removesuffix("/api")
    with chromium_page(height=1000) as page:
        page.goto(f"{base}/deployments")
        password = page.locator("input[type=password]")
        expect(password).to_be_visible(timeout=WAIT_MS)
        save_screenshot(page, locked.state / "locked-ui-login.png")
        expect(page.get_by_text("locked-deployment")).to_have_count(0)
        password.fill(AUTH)
        password.press("Enter")
        page.goto(f"{base}/deployments")
        expect(page.get_by_text("locked-deployment").first).to_be_visible(timeout=WAIT_MS)
        save_screenshot(page, locked.state / "locked-ui-deployments.png")
