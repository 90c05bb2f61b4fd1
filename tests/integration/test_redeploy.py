"""Redeploy: latest code, provisioning skipped when done, only changed services rebuilt and
restarted, every run kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from deploy_runs import RunStatus, StepStatus
from deploy_runs.spec import load_server

from .conftest import http_get

pytestmark = pytest.mark.timeout(400)


def container_ids(docker_client, app) -> dict[str, str]:
    return {c.labels["deploy-runs.service"]: c.id for c in docker_client.containers.list(
        filters={"label": f"deploy-runs.app={app.name}"})}


def build_commands(client, run_id) -> list[str]:
    return [line.text for line in client.logs(run_id)
            if line.stream == "command" and line.text.startswith("$ docker build")]


@pytest.mark.builds
def test_redeploy_rebuilds_and_restarts_only_the_changed_service(client, make_app,
                                                                 docker_client):
    app = make_app("shop")
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    assert {s.name: s.build for s in first.services} == dict.fromkeys(
        ("web", "api", "admin"), "rebuilt")
    before = container_ids(docker_client, app)

    head = app.push({"api/content/index.html": '{"service": "api", "version": 2}\n'},
                    "api: version 2")
    second = client.wait(client.redeploy(app.name).id, timeout=180)

    assert second.status is RunStatus.COMPLETED, second.error
    assert second.id != first.id
    assert second.commit == head
    assert second.step("Provision server").status is StepStatus.SKIPPED
    assert second.step("Provision server").message
    releases = {s.name: s for s in second.services}
    assert releases["api"].build == "rebuilt"
    assert releases["api"].build_reason == "context changed (1 file)"
    assert releases["api"].container == "replaced"
    for name in ("web", "admin"):
        assert releases[name].build == "reused"
        assert releases[name].container == "kept"
    after = container_ids(docker_client, app)
    assert after["web"] == before["web"] and after["admin"] == before["admin"]
    assert after["api"] != before["api"]
    assert http_get(app.url("api"))[1] == '{"service": "api", "version": 2}\n'
    assert "Shop storefront" in http_get(app.url("web"))[1]
    builds = build_commands(client, second.id)
    assert len(builds) == 1 and "-api:" in builds[0]
    assert not any(c.name.endswith("-previous") for c in docker_client.containers.list(
        all=True, filters={"label": f"deploy-runs.app={app.name}"}))

    # The earlier run is unchanged in history, but no longer the current release; runs are
    # listed most recent first.
    earlier = client.get_run(first.id)
    assert earlier.model_dump(exclude={"current"}) == first.model_dump(exclude={"current"})
    assert first.current and not earlier.current and client.get_run(second.id).current
    assert [r.id for r in client.runs(app=app.name)] == [second.id, first.id]

    shown = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "show", str(second.id)],
                           capture_output=True, text=True, timeout=60, check=True,
                           env={**os.environ, "COLUMNS": "200"}).stdout
    assert "rebuilt (context changed (1 file))" in shown
    assert "reused (unchanged)" in shown


@pytest.mark.builds
def test_redeploy_with_no_change_builds_nothing_and_replaces_nothing(client, make_app,
                                                                     docker_client):
    app = make_app("shop")
    assert client.wait(client.deploy(app.name).id, timeout=180).status is RunStatus.COMPLETED
    before = container_ids(docker_client, app)

    run = client.wait(client.redeploy(app.name).id, timeout=180)

    assert run.status is RunStatus.COMPLETED, run.error
    assert run.trigger == "redeploy"
    assert build_commands(client, run.id) == []
    assert all(s.build == "reused" and s.container == "kept" for s in run.services)
    assert container_ids(docker_client, app) == before


def test_changed_provisioning_inputs_or_lost_provisioning_run_provisioning_again(
        client, make_app, sandbox_info):
    app = make_app("hello")
    assert client.wait(client.deploy(app.name).id, timeout=120).status is RunStatus.COMPLETED
    run = client.wait(client.redeploy(app.name).id, timeout=120)
    assert run.step("Provision server").status is StepStatus.SKIPPED

    # The server lost what provisioning made.
    local = sandbox_info.host("local")
    known = sandbox_info.dir / "known_hosts_test"
    known.write_text(local.known_hosts_line() + "\n")
    subprocess.run(["ssh", "-q", "-p", str(local.port), "-i", str(local.private_key_path),
                    "-o", f"UserKnownHostsFile={known}", f"{local.username}@{local.host}",
                    f"rm -f deploy-runs/apps/{app.name}/provisioned"], check=True, timeout=30)
    run = client.wait(client.redeploy(app.name).id, timeout=120)
    assert run.step("Provision server").status is StepStatus.COMPLETED

    # A provisioning input changed: the app now deploys as another user.
    server = load_server("sandbox-local").model_copy(update={"username": "root"})
    server.save("sandbox-local-root", overwrite=True)
    app.application.server = server
    app.application.save(app.name, overwrite=True)
    run = client.wait(client.redeploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    assert run.step("Provision server").status is StepStatus.COMPLETED


@pytest.mark.parametrize("labelled", [True, False], ids=["left-by-a-failed-release", "stray"])
def test_a_container_already_named_previous_is_replaced_at_the_next_release(
        client, make_app, docker_client, labelled):
    # A failed release keeps the old container, stopped, as NAME-previous (for rolling back by
    # hand); the next release replaces it. One the app did not make is replaced as well.
    app = make_app("hello")
    assert client.wait(client.deploy(app.name).id, timeout=180).status is RunStatus.COMPLETED
    (service,) = container_ids(docker_client, app)
    previous = f"{app.name}-{service}-previous"
    labels = {"deploy-runs.app": app.name, "deploy-runs.service": service} if labelled else {}
    docker_client.containers.create("busybox:latest", ["true"], name=previous, labels=labels)
    app.push({"site/index.html": "<h1>hello again</h1>\n"}, "hello: again")

    run = client.wait(client.redeploy(app.name).id, timeout=180)

    assert run.status is RunStatus.COMPLETED, run.error
    assert http_get(app.url(service))[1] == "<h1>hello again</h1>\n"
    assert not any(c.name == previous for c in docker_client.containers.list(all=True))


def test_a_moved_repository_is_fetched_from_at_the_next_deploy(client, make_app):
    # The checkout on the server came from the first repository; the app now names another one,
    # with a history of its own.
    app = make_app("hello")
    assert client.wait(client.deploy(app.name).id, timeout=120).status is RunStatus.COMPLETED
    first_repo, first_url = app.bare_repo, app.application.repository
    try:
        app.bare_repo = first_repo.with_name(f"{app.name}-moved.git")
        moved = app.push({"site/index.html": "<h1>moved</h1>\n"}, "hello: moved")
        app.application.repository = first_url.replace(first_repo.name, app.bare_repo.name)
        app.application.save(app.name, overwrite=True)

        run = client.wait(client.redeploy(app.name).id, timeout=120)
    finally:
        shutil.rmtree(first_repo, ignore_errors=True)

    assert run.status is RunStatus.COMPLETED, run.error
    assert run.commit == moved
    assert http_get(app.url())[1] == "<h1>moved</h1>\n"


def test_the_old_container_serves_until_its_successor_and_is_put_back_if_it_cannot_start(
        client, make_app, docker_client):
    import threading
    import time
    import uuid
    from datetime import UTC, datetime

    from .conftest import wait_for

    app = make_app("hello", files={"site/index.html": "version 1\n"})
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    (old,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})

    # a new version whose build takes a while: version 1 answers every request meanwhile
    marker = uuid.uuid4().hex
    app.push({"site/index.html": "version 2\n", "Dockerfile": (
        "FROM busybox:latest\n"
        f"RUN echo {marker} && sleep 4\n"
        "COPY site/ /www/\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')}, "version 2, slow build")
    answers: list[tuple[datetime, str]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                answer = http_get(app.url(), timeout=2)[1]
            except OSError as exc:
                answer = f"error: {exc}"
            answers.append((datetime.now(UTC), answer))
            time.sleep(0.05)

    run = client.deploy(app.name)
    wait_for(lambda: client.get_run(run.id).step("Build images").status is StepStatus.RUNNING,
             60, "the build to run")
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        second = client.wait(run.id, timeout=120)
    finally:
        done.set()
        poller.join()
    assert second.status is RunStatus.COMPLETED, second.error
    # every request until Start application began, the build included, got version 1, and
    # no request failed at all: the proxy switched to version 2 once it was healthy
    started = second.step("Start application").started_at
    before = [answer for when, answer in answers if when < started]
    assert len(before) > 20 and set(before) == {"version 1\n"}, before[-5:]
    assert {answer for _, answer in answers} <= {"version 1\n", "version 2\n"}, answers[-5:]
    assert http_get(app.url())[1] == "version 2\n"
    (current,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    assert current.id != old.id

    # a version whose container cannot start (a memory limit Docker refuses): the run fails
    # at Start application and version 2 serves on, never stopped
    app.application.services[0].memory = "1k"
    app.application.save(app.name, overwrite=True)
    app.push({"site/index.html": "version 3\n"}, "version 3")
    third = client.wait(client.deploy(app.name).id, timeout=120)
    assert third.status is RunStatus.FAILED
    assert third.error.step == "Start application"
    assert f"{app.name}-web keeps serving" in third.error.message, third.error.message
    assert http_get(app.url())[1] == "version 2\n"
    (back,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    assert back.id == current.id and back.labels["deploy-runs.commit"] == second.commit


def test_a_change_of_build_args_rebuilds(client, make_app):
    app = make_app("hello", files={"Dockerfile": (
        "FROM busybox:latest\nARG FLAVOUR=plain\nCOPY site/ /www/\n"
        "RUN echo \"$FLAVOUR\" > /www/flavour.txt\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')})
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    assert http_get(app.url() + "flavour.txt")[1] == "plain\n"
    same = client.wait(client.redeploy(app.name).id, timeout=120)
    assert {s.name: s.build for s in same.services} == {"web": "reused"}
    app.application.services[0].build_args = {"FLAVOUR": "spicy"}
    app.application.save(app.name, overwrite=True)
    changed = client.wait(client.redeploy(app.name).id, timeout=180)
    assert changed.status is RunStatus.COMPLETED, changed.error
    (web,) = changed.services
    assert web.build == "rebuilt", web
    assert "build arguments changed" in web.build_reason, web.build_reason
    assert http_get(app.url() + "flavour.txt")[1] == "spicy\n"
