"""Secrets reach the app and nothing else: not a log line, parameter, state, artifact, result,
label, flow-run input, the Prefect database, or the worker's output."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deploy_runs import RunStatus

pytestmark = pytest.mark.timeout(300)


def test_secret_env_values_reach_the_container_and_never_prefect(client, make_app,
                                                                 docker_client, prefect_api,
                                                                 prefect_state, sandbox_info):
    secret = f"s3cret-{uuid.uuid4().hex}"
    app = make_app("hello", spec_changes={"services": [{
        "name": "web", "container_port": 8080, "host_port": 0,
        "env": {"GREETING": "hello"}, "secret_env": {"API_TOKEN": secret},
        "health_check": {"timeout": 15, "interval": 0.2}}]})
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error

    (container,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    assert f"API_TOKEN={secret}" in container.attrs["Config"]["Env"]

    logs = list(client.logs(run.id))
    assert any("API_TOKEN" in line.text for line in logs), "the variable's name is logged"
    assert not any(secret in line.text for line in logs)
    assert secret not in run.model_dump_json()

    # Prefect's own client: the server wants a CSRF token for POSTs, which it fetches
    api = get_client(sync_client=True).__enter__()
    this_run = {"flow_runs": {"id": {"any_": [str(run.id)]}}}

    def records(path: str, body: dict) -> str:
        """This run's records of one kind (the server may hold many runs): all of them, paged,
        and at least one."""
        rows: list = []
        while True:
            page = api.request("POST", path, json={**body, "limit": 200, "offset": len(rows)})
            rows += page.json()
            if len(page.json()) < 200:
                break
        assert rows, f"no records of this run from {path}"
        return json.dumps(rows)

    seen = [
        api.request("GET", f"/flow_runs/{run.id}").text,
        records("/task_runs/filter", this_run),
        records("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}}),
        records("/logs/filter", {"logs": {"flow_run_id": {"any_": [str(run.id)]}}}),
        records("/flow_runs/filter", this_run),
        records("/deployments/filter", {"deployments": {"name": {"any_": [app.name]}}}),
        api.request("POST", f"/flow_runs/{run.id}/input/filter", json={"prefix": ""}).text,
        records("/block_documents/filter", {"include_secrets": False}),
    ]
    assert str(run.id) in seen[4] and app.name in seen[5]
    # the SSH private key: its base64 body, line by line (as stored in PEM/OpenSSH form)
    key_lines = [line for line in
                 sandbox_info.host("local").private_key_path.read_text().splitlines()
                 if line and not line.startswith("-----")]
    assert key_lines
    for text in seen + [line.text for line in logs] + [run.model_dump_json()]:
        assert secret not in text
        assert not any(line in text for line in key_lines)
    # The whole database, byte for byte (block documents are stored encrypted), and the
    # worker's output: the test session's own Prefect server's (an outside one's database
    # cannot be read from here)
    scanned = []
    for path in Path(prefect_state).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data, path
            assert not any(line.encode() in data for line in key_lines), path
            scanned.append(path.name)
    assert any(name.endswith(".db") for name in scanned), \
        f"the server's database was not scanned ({scanned}): needs the session's own server"
    assert "worker.log" in scanned


def test_the_env_file_is_private_and_goes_when_its_secrets_go(client, make_app, docker_client):
    import pwd
    import stat

    from prefect.blocks.fields import SecretDict

    from blocks import Application
    from deploy_runs.commands import AppLayout
    from deploy_runs.spec import register

    secret = f"s3cret-{uuid.uuid4().hex}"
    app = make_app("hello", spec_changes={"services": [{
        "name": "web", "container_port": 8080, "host_port": 0,
        "secret_env": {"API_TOKEN": secret}, "health_check": {"timeout": 15, "interval": 0.2}}]})
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    home = Path(pwd.getpwnam("deploy").pw_dir)
    layout = AppLayout(app.name)
    env_file, directory = home / layout.env_file("web"), home / layout.secrets_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text() == f"API_TOKEN={secret}\n"
    assert not list((home / layout.root).glob("*.env")), "no env file outside the directory"
    # the container's config label hashes the secret with the app's key, not plainly
    import hashlib
    import json

    (container,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    plain = hashlib.sha256(json.dumps([["API_TOKEN", secret]]).encode()).hexdigest()
    saved = Application.load(app.name)
    assert saved.config_key is not None
    assert saved.secrets_digest("web") != plain
    from deploy_runs.steps.start import runtime_config_hash

    image, service = container.image.tags[0], saved.services[0]
    label = container.labels["deploy-runs.config"]
    # (served through the proxy: an HTTP service of an app with proxy on)
    assert label == runtime_config_hash(image, service, saved.secrets_digest("web"), True)
    assert label != runtime_config_hash(image, service, plain, True), "testable without the key"

    # re-registered (as `apps add` does) without the secret: the key stays, the file goes
    register(saved.model_copy(update={"secret_env": SecretDict({}), "config_key": None}))
    assert Application.load(app.name).config_key.get_secret_value() == \
        saved.config_key.get_secret_value()
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    assert not env_file.exists()
    assert container.id not in [c.id for c in docker_client.containers.list()]
