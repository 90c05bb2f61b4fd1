"""The first real deploy run, end to end: real sshd + Docker engine, real Prefect and worker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from deploy_runs import AppNotFound, ConfigError, RunNotFound, RunStatus, StepStatus
from deploy_runs.remote import fingerprint, public_key
from deploy_runs.safetext import markdown_text
from deploy_runs.spec import load_server
from deploy_runs.steps import PLANNED_STEPS

from .conftest import http_get
from .test_failures import summary_artifact

pytestmark = pytest.mark.timeout(300)


def statuses(run):
    return [(s.name, s.status) for s in run.steps]


@pytest.mark.builds
def test_deploy_through_the_api_completes_all_five_steps_and_serves_the_page(client, make_app,
                                                                          builder):
    app = make_app("hello")
    run = client.deploy(app.name)
    assert run.status is RunStatus.STARTED
    assert [s.status for s in run.steps] == [StepStatus.PENDING] * 5

    run = client.wait(run.id, timeout=120)

    assert run.status is RunStatus.COMPLETED, run.error
    assert statuses(run) == [(name, StepStatus.COMPLETED) for name in PLANNED_STEPS]
    starts = [s.started_at for s in run.steps]
    assert starts == sorted(starts), "steps ran in order"
    assert run.commit == app.commits[-1]
    assert run.commit_message == f"{app.name}: first commit"
    assert run.name == f"{app.name}-{app.commits[-1][:7]}"
    assert run.trigger == "deploy"
    status, page = http_get(app.url())
    assert status == 200 and "Hello from deploy-runs" in page
    # the run in the product's words, for the Prefect UI: a completed run's summary artifact
    summary = summary_artifact(run.id)
    assert summary.startswith(f"## 🟢 {markdown_text(app.name)}: Completed"), summary[:200]
    assert f"`{run.commit[:12]}`" in summary
    for step in PLANNED_STEPS:
        assert re.search(rf"\| 🟢 \| {step} \| Completed \| ", summary), (step, summary)
    assert "failed" not in summary

    build = list(client.logs(run.id, step="Build images"))
    commands = [line.text for line in build if line.stream == "command"]
    assert any(re.match(r"\$ docker build --tag deploy-runs/t-hello-\w+-web:", c) for c in commands)
    if builder == "buildkit":  # BuildKit's plain progress, on stderr
        output = [line.text for line in build if line.stream == "stderr"]
        assert any(re.match(r"#\d+ \[1/\d+\] FROM ", line) for line in output), output
        assert any(re.match(r"#\d+ naming to docker.io/deploy-runs/", line) for line in output)
    else:
        output = [line.text for line in build if line.stream == "stdout"]
        assert any(line.startswith("Step 1/") for line in output)
        assert any(line.startswith("Successfully tagged deploy-runs/") for line in output)


def test_the_container_runs_with_init_ports_env_and_labels(client, make_app, docker_client):
    app = make_app("hello")
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    (container,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    config = container.attrs
    assert config["HostConfig"]["Init"] is True
    # hardened by default: no privilege gain, a process limit, rotated logs
    assert config["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert config["HostConfig"]["PidsLimit"] == 4096
    assert config["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "10m", "max-file": "5"}}
    assert container.labels["deploy-runs.service"] == "web"
    assert container.labels["deploy-runs.run"] == str(run.id)
    assert container.labels["deploy-runs.commit"] == run.commit
    assert "GREETING=hello" in config["Config"]["Env"]
    # behind the server's proxy: the container publishes on loopback only, the proxy serves
    # the public port
    [binding] = config["HostConfig"]["PortBindings"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1" and binding["HostPort"] != str(app.ports["web"])
    assert http_get(app.url())[0] == 200


def test_deploy_through_prefect_deployment_run_and_a_worker(client, make_app, prefect_api):
    app = make_app("hello")
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", f"deploy-app/{app.name}"],
        capture_output=True, text=True, timeout=120, check=True)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)

    run = client.wait(run_id, timeout=120)

    assert run.status is RunStatus.COMPLETED, run.error
    assert statuses(run) == [(name, StepStatus.COMPLETED) for name in PLANNED_STEPS]
    assert run.commit == app.commits[-1]
    assert run.trigger == "prefect"  # started around deploy-runs: Prefect's CLI, UI, a schedule
    assert http_get(app.url())[0] == 200
    assert [r.id for r in client.runs(app=app.name)] == [run.id]


@pytest.mark.builds
def test_a_failing_build_fails_the_run_at_build_images(client, make_app, docker_client, builder):
    app = make_app("hello", files={"Dockerfile": (
        "FROM busybox:latest\n"
        "RUN echo compiling && echo 'error: missing semicolon' >&2 && exit 3\n")})
    before = {c.id for c in docker_client.containers.list(all=True)}

    run = client.wait(client.deploy(app.name).id, timeout=120)

    # the failed RUN's intermediate container is not left behind on the server (containers
    # another test's deploy made meanwhile, or the server's proxy, carry deploy-runs labels)
    made = [c for c in docker_client.containers.list(all=True) if c.id not in before]
    assert not [c.name for c in made if not {"deploy-runs.app", "deploy-runs.proxy"} & set(
        c.labels)], made

    assert run.status is RunStatus.FAILED
    assert statuses(run) == [
        ("Provision server", StepStatus.COMPLETED),
        ("Fetch source", StepStatus.COMPLETED),
        ("Build images", StepStatus.FAILED),
        ("Start application", StepStatus.SKIPPED),
        ("Health check", StepStatus.SKIPPED),
    ]
    error = run.error
    assert error.step == "Build images"
    assert error.command.startswith("docker build --tag deploy-runs/")
    assert any("error: missing semicolon" in line for line in error.output_tail)
    # the RUN's exit code: the legacy builder's docker build exits with it; BuildKit's
    # exits 1 and says it
    if builder == "buildkit":
        assert error.exit_code == 1
        assert any(line.endswith("exit code: 3") for line in error.output_tail)
    else:
        assert error.exit_code == 3
    # the headline is what broke (the RUN and its code), in the run's message, the error and
    # the step's note, without Prefect's "Task run encountered an exception" wrapper
    assert re.search(r"(?:exit code: |non-zero code: )3$", error.message), error.message
    assert run.message == f"Build images failed: {error.message}"
    assert run.step("Build images").message == error.message


def test_changed_host_key_fails_provision_server_with_a_host_key_error(client, make_app,
                                                                       sandbox_info, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    impostor = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    server = load_server("sandbox-local").model_copy(update={"host_key": impostor})
    server.save("sandbox-impostor", overwrite=True)
    app = make_app("hello", server="sandbox-impostor")

    run = client.wait(client.deploy(app.name).id, timeout=120)

    assert run.status is RunStatus.FAILED
    assert run.steps[0].status is StepStatus.FAILED
    assert [s.status for s in run.steps[1:]] == [StepStatus.SKIPPED] * 4
    assert run.error.step == "Provision server"
    assert "host key mismatch" in run.error.message
    offered = fingerprint(public_key(sandbox_info.host("local").host_key))
    expected = fingerprint(public_key(impostor))
    assert f"offered {offered}, expected {expected}" in run.error.message


def test_unknown_app_and_run_are_clear_errors(client, prefect_api):
    with pytest.raises(AppNotFound, match="no application 'no-such-app'"):
        client.deploy("no-such-app")
    with pytest.raises(RunNotFound):
        client.get_run("00000000-0000-0000-0000-000000000000")
    with pytest.raises(RunNotFound):
        client.get_run("not-a-uuid")
    with pytest.raises(ConfigError, match="ref"):
        client.deploy("no-such-app", ref="--upload-pack=evil")


def test_cli_refuses_an_invalid_spec_naming_the_field_and_saves_nothing(tmp_path, prefect_api,
                                                                       server_blocks):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: t-invalid\nrepository: git://127.0.0.1:9418/x.git\nserver: sandbox-local\n"
        "services:\n  - name: web\n    container_port: 8080\n    host_port: 99999\n")
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "apps", "add", str(spec)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "services.0.host_port" in done.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(spec.read_text().replace("99999", "18999")
                       .replace("server: sandbox-local", "server: nowhere"))
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "apps", "add", str(unknown)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "server: no SSH server block named 'nowhere'" in done.stderr
    from blocks import Application

    with pytest.raises(ValueError):
        Application.load("t-invalid")


def test_a_run_read_the_moment_it_ended_shows_its_steps_as_they_ran(client, make_app):
    # Prefect records a task run's last state a little after the flow's own: read at once, a
    # step that ran must not show as not run (Skipped).
    from flows.deploy import run_in_process

    app = make_app("hello")
    for attempt in range(3):
        state = run_in_process(app.name)
        run = client.get_run(state.state_details.flow_run_id)
        assert run.status is RunStatus.COMPLETED, run.error
        assert run.trigger == "in-process"
        shown = {s.name: s.status for s in run.steps}
        # the first deploy provisions (Completed); later ones find it done (Skipped)
        provisioned = StepStatus.COMPLETED if attempt == 0 else StepStatus.SKIPPED
        assert shown == {**{n: StepStatus.COMPLETED for n in PLANNED_STEPS},
                         "Provision server": provisioned}, shown


def test_a_run_on_prefect_s_stock_process_worker(client, make_app, prefect_api, tmp_path):
    """`prefect worker start --type process` (no deploy-runs worker) runs deploy runs too."""
    from prefect.client.orchestration import get_client

    from deploy_runs.prefect_local import start_worker, stop

    from .conftest import deployment_on_own_pool

    app = make_app("hello")
    pool, deployment_id = deployment_on_own_pool(app, "stock")
    start_worker(prefect_api, tmp_path, name="stock", pool=pool, warm=False)
    try:
        with get_client(sync_client=True) as prefect:
            flow_run = prefect.create_flow_run_from_deployment(
                deployment_id, tags=["deploy-runs", f"app:{app.name}"])
        run = client.wait(flow_run.id, timeout=180)
    finally:
        stop(tmp_path)
    assert run.status is RunStatus.COMPLETED, run.error
    assert statuses(run) == [(name, StepStatus.COMPLETED) for name in PLANNED_STEPS]
    assert http_get(app.url())[0] == 200
    worker_log = (tmp_path / "stock.log").read_text()
    assert f"submitting flow run '{flow_run.id}'" in worker_log  # the stock worker ran it
    assert "prefect.flow_runs.worker" in worker_log
