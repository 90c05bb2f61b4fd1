"""An application on several servers (network-namespace hosts, each with its own sshd and
Docker engine): every step runs on each server, the log says which, the app serves on all, and
one failing server fails the step naming it."""

from __future__ import annotations

import uuid

import docker
import pytest

from deploy_runs import ConfigError, RunStatus, StepStatus, sandbox
from deploy_runs.sandbox_blocks import block_name, server_block
from deploy_runs.spec import application_from_file
from deploy_runs.status import STOPPED_STEP_MESSAGE

from .conftest import held, http_get, server_processes, slow_build_files, wait_for

pytestmark = pytest.mark.timeout(300)

NAMES = ("m1", "m2")


@pytest.fixture(scope="module")
def two_servers(server_blocks) -> list[sandbox.SandboxHost]:
    hosts = []
    for name in NAMES:
        host = sandbox.add_host(name)
        server_block(host).save(block_name(host), overwrite=True)
        hosts.append(host)
    return hosts


def serves(app, host) -> tuple[int, str]:
    return http_get(f"http://{host.host}:{app.ports['web']}/")


def test_every_step_runs_on_each_server_and_the_app_serves_on_all(client, make_app,
                                                                  two_servers):
    app = make_app("hello", spec_changes={"servers": [block_name(h) for h in two_servers]})
    run = client.wait(client.deploy(app.name).id, timeout=180)
    assert run.status is RunStatus.COMPLETED, run.error
    assert [s.status for s in run.steps][1:] == [StepStatus.COMPLETED] * 4

    page = (app.source / "site" / "index.html").read_text()
    for host in two_servers:
        assert serves(app, host) == (200, page)
    lines = list(client.logs(run.id))
    for step in [s.name for s in run.steps]:
        said = [line.text for line in lines if line.step == step and "on server" in line.text]
        assert said == [f"on server deploy@{h.host}:22 ({i} of 2)"
                        for i, h in enumerate(two_servers, 1)], (step, said)
    # each server's build decision is recorded
    (web,) = run.services
    assert web.build == "rebuilt" and web.container == "replaced"
    # every server runs the same commit (the first server resolved the branch)
    for host in two_servers:
        engine = docker.DockerClient(base_url=host.docker_host)
        try:
            (container,) = engine.containers.list(
                filters={"label": f"deploy-runs.app={app.name}"})
            assert container.labels["deploy-runs.commit"] == run.commit == app.commits[-1]
        finally:
            engine.close()


@pytest.mark.parametrize("failing", [0, 1], ids=["first", "second"])
def test_one_failing_server_fails_the_step_and_names_it(client, make_app, two_servers, failing):
    app = make_app("hello", spec_changes={"servers": [block_name(h) for h in two_servers]})
    sandbox.stop_engine(two_servers[failing].name)
    try:
        run = client.wait(client.deploy(app.name).id, timeout=180)
    finally:
        sandbox.add_host(two_servers[failing].name)  # its engine again, for the tests after
    assert run.status is RunStatus.FAILED
    assert run.error.step == "Provision server"
    assert run.error.message.startswith(f"on deploy@{two_servers[failing].host}:22: ")
    assert [s.status for s in run.steps[1:]] == [StepStatus.SKIPPED] * 4
    kinds = [s.kind for s in run.error.suggestions]
    assert "docker-daemon-down" in kinds, kinds
    said = [line.text for line in client.logs(run.id) if line.text.startswith("on server ")]
    # the step stops at the failing server: a later one is not touched
    assert said == [f"on server deploy@{h.host}:22 ({i} of 2)"
                    for i, h in enumerate(two_servers[:failing + 1], 1)], said


def test_pause_waits_until_the_step_is_done_on_every_server(client, make_app, two_servers):
    marker = f"multi{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(1, marker),
                   spec_changes={"servers": [block_name(h) for h in two_servers]})
    run = client.deploy(app.name)
    with held(marker):  # paused while the first server's build runs
        client.pause(run.id)
    paused = wait_for(lambda: (r := client.get_run(run.id)).status is RunStatus.PAUSED and r,
                      90, "the run to pause")
    assert paused.step("Build images").status is StepStatus.COMPLETED
    assert paused.step("Start application").started_at is None
    built_on = [line.text for line in client.logs(run.id, step="Build images")
                if line.text.startswith("on server ")]
    assert len(built_on) == 2, built_on  # the build ran on both before the pause took effect
    assert not [line for line in client.logs(run.id, step="Start application")]
    client.resume(run.id)
    done = client.wait(run.id, timeout=180)
    assert done.status is RunStatus.COMPLETED, done.error
    for host in two_servers:
        assert serves(app, host)[0] == 200


def test_a_spec_naming_a_missing_server_is_refused_naming_the_field(tmp_path, two_servers):
    spec = tmp_path / "app.yaml"
    spec.write_text(f"""name: multi
repository: git://127.0.0.1:9418/multi.git
servers: [{block_name(two_servers[0])}, no-such-server]
services: [{{name: web, container_port: 8080, host_port: 18099}}]
""")
    with pytest.raises(ConfigError, match=r"servers\.1: no SSH server block named 'no-such-server'"):
        application_from_file(spec)
    spec.write_text(spec.read_text().replace("servers:", "server: x\nservers:"))
    with pytest.raises(ConfigError, match=r"give either `server` .* not both"):
        application_from_file(spec)


def test_stop_applies_to_every_server(client, make_app, two_servers):
    marker = f"multi{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(120, marker),
                   spec_changes={"servers": [block_name(h) for h in two_servers]})
    run = client.deploy(app.name)
    wait_for(lambda: server_processes(marker), 90, "the first server's build to be running")
    client.stop(run.id)
    run = client.wait(run.id, timeout=60)
    assert run.status is RunStatus.STOPPED
    build = run.step("Build images")
    assert (build.status, build.message) == (StepStatus.FAILED, STOPPED_STEP_MESSAGE)
    assert [run.step(n).status for n in ("Start application", "Health check")] == \
        [StepStatus.SKIPPED] * 2
    wait_for(lambda: not server_processes(marker), 30, "the build to be killed on the server")
    said = [line.text for line in client.logs(run.id, step="Build images")
            if "on server" in line.text]
    assert said == [f"on server deploy@{two_servers[0].host}:22 (1 of 2)"], said
