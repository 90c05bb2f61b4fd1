"""The services of an app built side by side (build_parallelism, default all): each line of
the step's log says its service; a failing build stops the others on the server and the
failure names its service; Stop kills every build running."""

from __future__ import annotations

import time
import uuid

import pytest

from deploy_runs import RunStatus, StepStatus
from deploy_runs.status import STOPPED_STEP_MESSAGE

from .conftest import server_processes, wait_for

pytestmark = pytest.mark.timeout(300)


def slow(mark: str) -> str:
    return ("FROM busybox:latest\n"
            f"RUN sleep 120 && echo {mark}\n"
            "COPY content/ /www/\n"
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')


def step_lines(client, run_id) -> list[str]:
    return [line.text for line in client.logs(run_id, step="Build images")]


@pytest.mark.builds
def test_builds_run_side_by_side_and_stop_kills_every_one(client, make_app):
    web, api = (f"side-{uuid.uuid4().hex[:10]}" for _ in range(2))
    app = make_app("shop", {"web/Dockerfile": slow(web), "api/Dockerfile": slow(api)})
    run_id = client.deploy(app.name).id
    # both slow builds run on the server at the same time
    wait_for(lambda: server_processes(web) and server_processes(api), 90,
             "both slow builds running at once")
    client.stop(run_id)
    wait_for(lambda: not server_processes(web) and not server_processes(api), 15,
             "every build killed on the server")
    run = client.wait(run_id, timeout=60)
    assert run.status is RunStatus.STOPPED, (run.status, run.message)
    assert run.step("Build images").status is StepStatus.FAILED
    assert run.step("Build images").message == STOPPED_STEP_MESSAGE
    assert run.step("Start application").status is StepStatus.SKIPPED
    lines = step_lines(client, run_id)
    assert any("building 3 images side by side" in t for t in lines), lines
    for service in ("web", "api", "admin"):
        assert any(t.startswith(f"[{service}] $ docker build") for t in lines), (service, lines)
    # the fast build's output is there, under its own service
    assert any(t.startswith("[admin] ") and "$ docker build" not in t for t in lines), lines


@pytest.mark.builds
def test_a_failing_build_stops_the_others_and_the_failure_names_its_service(client, make_app):
    web = f"side-{uuid.uuid4().hex[:10]}"
    app = make_app("shop", {"web/Dockerfile": slow(web), "api/Dockerfile": (
        "FROM busybox:latest\nRUN echo 'error: api will not build' >&2 && exit 3\n")})
    began = time.monotonic()
    run = client.wait(client.deploy(app.name).id, timeout=180)
    assert run.status is RunStatus.FAILED
    build = run.step("Build images")
    assert build.status is StepStatus.FAILED
    assert run.error.step == "Build images"
    assert run.error.message.startswith("api: "), run.error.message
    # the web build (two minutes of sleep) was killed, not waited for
    assert time.monotonic() - began < 90
    wait_for(lambda: not server_processes(web), 15, "the web build to be gone from the server")
    lines = step_lines(client, run.id)
    assert "[web] web: stopped, api failed" in lines, lines
    assert run.step("Start application").status is StepStatus.SKIPPED
