"""Rollback: v1, v2, then a rollback run puts v1 back - its images (no build command runs) and
its recorded runtime configuration - with Fetch source and Build images Skipped and the reason
said; `show` marks the current release. A rollback to a release whose image was pruned says so
and builds it again from that commit."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from deploy_runs import RunStatus, StepStatus
from deploy_runs.errors import InvalidControl
from deploy_runs.spec import register

from .test_failures import summary_artifact

pytestmark = pytest.mark.timeout(420)


def container_env(docker_client, app) -> dict[str, str]:
    container = docker_client.containers.get(f"{app.name}-web")
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def test_rollback_puts_the_previous_release_back_without_building(client, make_app,
                                                                  docker_client):
    app = make_app("hello")
    with pytest.raises(InvalidControl, match="has no completed run"):
        client.rollback(app.name)
    v1 = client.wait(client.deploy(app.name).id, timeout=180)
    with pytest.raises(InvalidControl, match="no earlier release than the current one"):
        client.rollback(app.name)
    # v2: new code and a new runtime configuration (an env value)
    app.push({"site/index.html": "<h1>v2</h1>\n"}, "v2")
    service = app.application.services[0]
    register(app.application.model_copy(update={"services": [service.model_copy(
        update={"env": {**service.env, "GREETING": "v2"}})]}))
    v2 = client.wait(client.deploy(app.name).id, timeout=180)
    assert (v1.status, v2.status) == (RunStatus.COMPLETED, RunStatus.COMPLETED)
    assert container_env(docker_client, app)["GREETING"] == "v2"

    back = client.wait(client.rollback(app.name).id, timeout=180)
    assert back.status is RunStatus.COMPLETED, back.error
    assert (back.trigger, back.rollback_to, back.commit) == ("rollback", v1.id, v1.commit)
    for step in ("Fetch source", "Build images"):
        assert back.step(step).status is StepStatus.SKIPPED
        assert back.step(step).message == (f"Skipped: rollback to run {v1.id}, commit "
                                           f"{v1.commit[:12]}: images kept.")
    assert not [line for line in client.logs(back.id) if line.text.startswith("$ docker build")]
    assert {s.image for s in back.services} == {s.image for s in v1.services}
    assert "<h1>v2</h1>" not in httpx.get(app.url(), timeout=5).text
    assert container_env(docker_client, app)["GREETING"] == "hello"  # v1's configuration
    assert client.get_run(back.id).current and not client.get_run(v2.id).current
    shown = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "show", str(back.id)],
                           capture_output=True, text=True, timeout=120)
    assert "current release" in shown.stdout and f"rollback to the release of run {v1.id}" \
        in " ".join(shown.stdout.split())
    compared = client.compare(v2.id, back.id)  # compare works on it: v1's configuration again
    assert compared.config is not None and compared.config.env_changed == ["web.GREETING"]

    # v2's image pruned (keep only the current release), then a rollback to v2 builds it again
    assert client.prune(app.name, keep=1)
    again = client.wait(client.rollback(app.name, to=v2.id).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error
    assert again.step("Build images").status is StepStatus.COMPLETED
    said = " ".join(line.text for line in client.logs(again.id) if line.step is None)
    assert "no longer on the server(s) (pruned)" in said
    assert "<h1>v2</h1>" in httpx.get(app.url(), timeout=5).text
    assert container_env(docker_client, app)["GREETING"] == "v2"

    # through Prefect: `prefect deployment run` with the parameter; the summary artifact says it
    done = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                           f"deploy-app/{app.name}", "--param", "rollback_to=previous"],
                          capture_output=True, text=True, timeout=120, check=True)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)
    third = client.wait(run_id, timeout=180)
    assert third.status is RunStatus.COMPLETED and third.rollback_to == back.id, third.error
    assert third.step("Build images").status is StepStatus.SKIPPED
    assert "<h1>v2</h1>" not in httpx.get(app.url(), timeout=5).text
    summary = summary_artifact(third.id)
    assert f"**Rollback** to the release of run `{back.id}`" in summary
    assert "**Current release** of the app" in summary
