"""Failed runs, produced for real in the sandbox: each kind of failure is caused for real (a
taken port, a full disk, a wrong key, a stopped engine, ...), deployed, and the run must name
the failed step, the command, the output, and the right suggested fix.

With DEPLOY_RUNS_CAPTURE_FIXTURES=1 each case also writes the failure it produced to
tests/fixtures/failures/CASE.json: the real outputs the diagnosis rules are unit-tested on.
"""

from __future__ import annotations

import contextvars
import copy
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from blocks import SSHServer
from deploy_runs import RunStatus, StepStatus, sandbox
from deploy_runs.diagnosis import register_suggester, unregister_suggester
from deploy_runs.models import Run, Suggestion
from deploy_runs.sandbox_blocks import server_block
from flows.deploy import run_in_process

from .conftest import current_builder, free_port, http_get, server_processes

pytestmark = pytest.mark.timeout(300)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "failures"
CAPTURE = os.environ.get("DEPLOY_RUNS_CAPTURE_FIXTURES") == "1"
WEB = {"name": "web", "context": ".", "dockerfile": "Dockerfile", "container_port": 8080,
       "host_port": 1, "health_check": {"type": "http", "path": "/", "timeout": 4,
                                        "interval": 0.2}}


def deploy_watching(client, app: str, marker: str) -> Future[Run]:
    """`deploy_here` in a thread; returns once the command with `marker` is seen running on
    the server (a test that checks it is gone afterwards has seen it there)."""
    pool = ThreadPoolExecutor(max_workers=1)
    running = pool.submit(contextvars.copy_context().run, deploy_here, client, app)
    pool.shutdown(wait=False)
    deadline = time.monotonic() + 60
    while not server_processes(marker):
        assert not running.done(), f"the run ended before {marker!r} ran: {running.result()}"
        assert time.monotonic() < deadline, f"{marker!r} never ran on the server"
        time.sleep(0.05)
    return running


def deploy_here(client, app: str, **params) -> Run:
    """Run the deploy flow in this process (no worker start-up) and read the run back."""
    state = run_in_process(app, **params)
    return client.wait(state.state_details.flow_run_id, timeout=120)


def check_failed(run: Run, step: str, kind: str, case: str) -> Run:
    assert run.status is RunStatus.FAILED, (run.status, run.message)
    assert run.step(step).status is StepStatus.FAILED, [(s.name, s.status) for s in run.steps]
    error = run.error
    assert error is not None and error.step == step, error
    assert error.suggestions, f"no suggestion for {case}: {error.text()}"
    assert error.suggestions[0].kind == kind, (case, [s.kind for s in error.suggestions],
                                               error.text())
    assert error.suggestions[0].evidence, error.suggestions[0]
    assert error.signature and error.signature.startswith(f"{kind}|{step}|")
    later = run.steps[[s.name for s in run.steps].index(step) + 1:]
    assert all(s.status is StepStatus.SKIPPED for s in later), later
    if CAPTURE:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        data = {"case": case, "expected_kind": kind,
                **error.model_dump(include={"step", "message", "command", "exit_code",
                                            "output_tail"})}
        if current_builder() != "legacy":
            data["case"] = case = f"{case}-{current_builder()}"
        (FIXTURES / f"{case}.json").write_text(json.dumps(data, indent=1) + "\n")
    return run


def summary_artifact(run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        [artifact] = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert artifact.type == "markdown"
    return str(artifact.data)


def server_variant(name: str, **changes) -> str:
    """Save a copy of the sandbox-local server block with some fields changed."""
    block = SSHServer.load("sandbox-local")
    data = block.model_dump()
    data["private_key"] = block.private_key.get_secret_value()
    data.update(changes)
    SSHServer(**data).save(name, overwrite=True)
    return name


def web(**changes) -> list[dict]:
    return [{**copy.deepcopy(WEB), **changes}]


def listening(port: int, address: str = "0.0.0.0") -> socket.socket:
    """A plain process (this one) listening on `port` of the server (this machine)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen()
    return sock


# --- SSH and the server ----------------------------------------------------------------------

def test_wrong_key_is_ssh_auth(client, make_app):
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()
    app = make_app("hello", server=server_variant("t-wrong-key", private_key=key))
    run = check_failed(deploy_here(client, app.name), "Provision server", "ssh-auth", "ssh-auth")
    assert "authentication failed" in run.error.message.lower()


def test_changed_host_key_is_refused_with_both_fingerprints(client, make_app):
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    app = make_app("hello", server=server_variant("t-other-host-key", host_key=other))
    run = check_failed(deploy_here(client, app.name), "Provision server", "host-key-mismatch",
                       "host-key-mismatch")
    assert re.search(r"offered ssh-ed25519 \S+, expected ssh-ed25519 \S+", run.error.message)


def test_an_unknown_host_key_is_refused_by_default(client, make_app):
    app = make_app("hello", server=server_variant(f"t-unpinned-{uuid.uuid4().hex[:6]}",
                                                  host_key=None))
    run = check_failed(deploy_here(client, app.name), "Provision server", "host-key-mismatch",
                       "host-key-unpinned")
    assert "no host key is pinned" in run.error.message


def test_trust_on_first_use_pins_the_first_key_and_refuses_another_later(client, make_app,
                                                                         sandbox_info):
    real = sandbox_info.host("local").host_key
    name = server_variant(f"t-tofu-{uuid.uuid4().hex[:6]}", host_key=None,
                          accept_unknown_host_key=True)
    app = make_app("hello", server=name)
    run = deploy_here(client, app.name)
    assert run.status is RunStatus.COMPLETED, run.error
    # the first key seen is saved in the server block, and said with its fingerprint
    assert SSHServer.load(name).host_key == real
    said = [line.text for line in client.logs(run.id, step="Provision server")]
    assert any("trusting the key it offered on first use, ssh-ed25519 SHA256:" in t
               for t in said), said
    assert any(f"pinned it as host_key of server block {name}" in t for t in said), said
    # the next run verifies against the pinned key: nothing is trusted anew
    again = deploy_here(client, app.name)
    assert again.status is RunStatus.COMPLETED, again.error
    assert not any("first use" in line.text for line in client.logs(again.id))
    # the pinned key is not the one the server offers any more (reinstalled, or someone in
    # the middle): refused as a mismatch, though unknown keys are still accepted on first use
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    server_variant(name, host_key=other, accept_unknown_host_key=True)
    run = check_failed(deploy_here(client, app.name), "Provision server", "host-key-mismatch",
                       "host-key-tofu-changed")
    assert "host key mismatch" in run.error.message
    assert SSHServer.load(name).host_key.split()[:2] == other.split()[:2], "not re-pinned"


def test_closed_ssh_port_is_server_unreachable(client, make_app):
    app = make_app("hello", server=server_variant("t-closed-port", port=free_port()))
    run = check_failed(deploy_here(client, app.name), "Provision server", "server-unreachable",
                       "server-unreachable")
    # refused at once: the step does not wait out the connect timeout (10 s)
    assert run.step("Provision server").duration < 2, run.step("Provision server").duration
    assert "Connection refused" in run.error.message
    assert run.trigger == "in-process" and run.app == app.name


def test_server_that_never_answers_fails_within_the_connect_timeout(client, make_app):
    # A port that accepts connections and then says nothing (a hung server): only the
    # connect timeout ends the wait.
    port = free_port()
    silent = listening(port, "127.0.0.1")
    try:
        app = make_app("hello", server=server_variant("t-silent-host", port=port,
                                                      connect_timeout=2))
        run = check_failed(deploy_here(client, app.name), "Provision server",
                           "server-unreachable", "server-silent")
        # the connect timeout (2 s) ends the wait, not something later
        duration = run.step("Provision server").duration
        assert 2 <= duration < 2 + 1.5, duration
    finally:
        silent.close()
    assert run.error.suggestions[0].title == "The server cannot be reached over SSH"


def test_user_without_docker_access_is_docker_permission(client, make_app):
    app = make_app("hello", server=server_variant("t-nodocker", username="deploy-nodocker"))
    run = check_failed(deploy_here(client, app.name), "Provision server", "docker-permission",
                       "docker-permission")
    assert "usermod -aG docker deploy-nodocker" in run.error.suggestions[0].detail


@pytest.fixture(scope="module")
def engine_down_host() -> Iterator[str]:
    host = sandbox.add_host("enginedown")
    server_block(host).save("sandbox-enginedown", overwrite=True)
    sandbox.stop_engine("enginedown")
    yield "sandbox-enginedown"
    sandbox.add_host("enginedown")  # its engine back, for the next test session


def test_stopped_docker_engine_is_docker_daemon_down(client, make_app, engine_down_host):
    app = make_app("hello", server=engine_down_host)
    started = time.monotonic()
    run = check_failed(deploy_here(client, app.name), "Provision server", "docker-daemon-down",
                       "docker-daemon-down")
    assert time.monotonic() - started < 60
    assert "Cannot connect to the Docker daemon" in "\n".join(run.error.output_tail)


# --- the source -------------------------------------------------------------------------------

def test_unknown_ref_is_git_ref_not_found(client, make_app):
    app = make_app("hello")
    run = check_failed(deploy_here(client, app.name, ref="no-such-branch"), "Fetch source",
                       "git-ref-not-found", "git-ref-not-found")
    assert "no-such-branch" in run.error.suggestions[0].title


def test_unknown_repository_is_git_repo_not_found(client, make_app, sandbox_info):
    app = make_app("hello")
    app.application.repository = (f"{sandbox_info.host('local').git_base_url}"
                                   f"missing-{uuid.uuid4().hex[:6]}.git")
    app.application.save(app.name, overwrite=True)
    check_failed(deploy_here(client, app.name), "Fetch source", "git-repo-not-found",
                 "git-repo-not-found")


def test_full_disk_is_disk_full(client, make_app):
    app = make_app("hello")
    home = Path(pwd.getpwnam("deploy").pw_dir)
    repo = home / "deploy-runs" / "apps" / app.name / "repo"
    repo.mkdir(parents=True)
    deploy = pwd.getpwnam("deploy")
    for path in (repo.parent.parent, repo.parent, repo):
        os.chown(path, deploy.pw_uid, deploy.pw_gid)
    # a real filesystem with no room: an 8 kB tmpfs where the checkout goes
    subprocess.run(["mount", "-t", "tmpfs", "-o",
                    f"size=8k,mode=0755,uid={deploy.pw_uid},gid={deploy.pw_gid}", "tmpfs",
                    str(repo)], check=True)
    try:
        run = check_failed(deploy_here(client, app.name), "Fetch source", "disk-full",
                           "disk-full")
    finally:
        subprocess.run(["umount", str(repo)], check=True)
    assert "No space left on device" in run.error.text()


# --- building ---------------------------------------------------------------------------------

@pytest.mark.builds
def test_missing_dockerfile_is_dockerfile_missing(client, make_app):
    app = make_app("hello", spec_changes={"services": web(dockerfile="docker/Dockerfile.prod")})
    run = check_failed(deploy_here(client, app.name), "Build images", "dockerfile-missing",
                       "dockerfile-missing")
    assert "services[web].dockerfile" in run.error.suggestions[0].detail


@pytest.mark.builds
def test_copy_of_missing_file_is_build_file_missing(client, make_app):
    dockerfile = ("FROM busybox:latest\nCOPY site/ /www/\nCOPY config/missing.conf /etc/app.conf\n"
                  'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')
    app = make_app("hello", files={"Dockerfile": dockerfile})
    run = check_failed(deploy_here(client, app.name), "Build images", "build-file-missing",
                       "build-file-missing")
    assert "missing.conf" in run.error.suggestions[0].title


@pytest.mark.builds
def test_failing_run_instruction_is_build_command_failed(client, make_app, builder):
    nonce = uuid.uuid4().hex[:8]
    dockerfile = (f"FROM busybox:latest\nRUN echo compiling {nonce} && "
                  "echo 'error: missing dependency libfoo' >&2 && exit 3\n")
    app = make_app("hello", files={"Dockerfile": dockerfile})
    run = check_failed(deploy_here(client, app.name), "Build images", "build-command-failed",
                       "build-command-failed")
    # docker build exits with the RUN's code (legacy builder), or 1 and says it (BuildKit)
    assert run.error.exit_code == (3 if builder == "legacy" else 1)
    assert "code 3" in run.error.suggestions[0].detail


@pytest.mark.builds
def test_unreachable_base_image_is_image_not_found(client, make_app):
    # A registry address on loopback where nothing listens: the engine cannot pull (and no
    # traffic leaves the machine).
    dockerfile = "FROM 127.0.0.1:9/acme/base:1.0\nCOPY site/ /www/\n"
    app = make_app("hello", files={"Dockerfile": dockerfile})
    run = check_failed(deploy_here(client, app.name), "Build images", "image-not-found",
                       "image-not-found")
    assert "127.0.0.1:9/acme/base:1.0" in run.error.suggestions[0].title


@pytest.mark.builds
def test_slow_build_past_the_step_timeout_is_killed_and_command_timeout(client, make_app):
    marker = f"slowbuild{uuid.uuid4().hex[:8]}"
    # (the shell stays, with the marker in its command line, while sleep runs: it has more
    # to do after it, so it does not exec sleep in its place)
    dockerfile = f"FROM busybox:latest\nRUN echo {marker} && sleep 120 && echo done\n"
    app = make_app("hello", files={"Dockerfile": dockerfile},
                   spec_changes={"timeouts": {"build": 3}})
    running = deploy_watching(client, app.name, f"echo {marker}")
    run = check_failed(running.result(timeout=120), "Build images", "command-timeout",
                       "command-timeout")
    assert run.step("Build images").duration < 3 + 1, run.step("Build images").duration
    assert run.error.timed_out
    assert "timeouts.build" in run.error.message
    assert not server_processes(f"echo {marker}"), "the build command still runs on the server"


@pytest.mark.builds
@pytest.mark.parametrize("command", [
    "yes {marker}",  # prints without pause
    # ~10,000 lines a second, for ever
    "while true; do seq 1 100 | sed s/^/{marker}/; usleep 10000; done",
], ids=["yes", "10k-lines-a-second"])
def test_a_build_printing_without_pause_is_killed_at_the_step_limit(client, make_app, command):
    marker = f"flood{uuid.uuid4().hex[:8]}"
    script = command.format(marker=marker)
    app = make_app("hello", files={"Dockerfile": f"FROM busybox:latest\nRUN {script}\n"},
                   spec_changes={"timeouts": {"build": 4}})
    # seen running on the server, so that its absence afterwards means it was killed
    running = deploy_watching(client, app.name, marker)
    run = check_failed(running.result(timeout=120), "Build images", "command-timeout",
                       "command-timeout")
    assert run.error.timed_out and "step timed out after 4s (timeouts.build)" in run.error.message
    step = run.step("Build images")
    # killed at the limit, not when the output pauses (it never does): within a second of
    # it, the kill and the storing of the lines already read included (4.01-4.14 s measured)
    assert step.duration < 4 + 1, step.duration
    assert not server_processes(marker), "the build command still runs on the server"
    assert all(len(line) <= 4000 for line in run.error.output_tail)


def test_a_run_past_its_run_timeout_is_stopped_and_fails_with_command_timeout(client, make_app):
    marker = f"slowrun{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files={"Dockerfile": f"FROM busybox:latest\nRUN echo {marker} && "
                                                  "sleep 120 && echo done\n"},
                   spec_changes={"timeouts": {"run": 4}})
    run = deploy_watching(client, app.name, f"echo {marker}").result(timeout=120)
    assert run.duration < 4 + 3, run.duration
    assert run.status is RunStatus.FAILED and run.error.timed_out
    assert "run timed out after 4s (timeouts.run)" in run.error.message
    assert run.error.suggestions[0].kind == "command-timeout"
    assert not server_processes(f"echo {marker}"), "the build command still runs on the server"


def test_a_hung_docker_engine_is_killed_at_the_provision_limit(client, make_app):
    """Every docker command on a server whose engine hangs (here: stopped with SIGSTOP) waits
    for ever: only the step's limit (timeouts.provision) ends Provision server."""
    host = sandbox.add_host("enginehung")
    server_block(host).save("sandbox-enginehung", overwrite=True)
    app = make_app("hello", server="sandbox-enginehung",
                   spec_changes={"timeouts": {"provision": 4}})
    sandbox.freeze_engine("enginehung")
    try:
        run = check_failed(deploy_here(client, app.name), "Provision server", "command-timeout",
                           "provision-hung-engine")
    finally:
        sandbox.freeze_engine("enginehung", frozen=False)
    assert "step timed out after 4s (timeouts.provision)" in run.error.message
    assert run.step("Provision server").duration < 4 + 2, run.step("Provision server").duration


def test_a_git_host_that_never_answers_is_killed_at_the_fetch_limit(client, make_app):
    """The repository's host accepts the connection and says nothing: only the step's limit
    (timeouts.fetch) ends Fetch source."""
    port = free_port()
    silent = listening(port, "127.0.0.1")
    try:
        app = make_app("hello", spec_changes={"timeouts": {"fetch": 3}})
        app.application.repository = f"git://127.0.0.1:{port}/{app.name}.git"
        app.application.save(app.name, overwrite=True)
        run = check_failed(deploy_here(client, app.name), "Fetch source", "command-timeout",
                           "fetch-silent-git-host")
    finally:
        silent.close()
    assert "step timed out after 3s (timeouts.fetch)" in run.error.message
    assert run.step("Fetch source").duration < 3 + 2, run.step("Fetch source").duration
    assert not server_processes(f"127.0.0.1:{port}"), "git still runs on the server"


def test_an_old_container_slow_to_stop_is_killed_at_the_start_limit(client, make_app):
    """Replacing a container that ignores SIGTERM waits for Docker's stop timeout (10 s);
    a start limit of 3 s ends Start application first."""
    stubborn = ("FROM busybox:latest\nCOPY site/ /www/\n"
                'CMD ["sh", "-c", "trap \'\' TERM; httpd -f -p 8080 -h /www & wait; '
                'while true; do sleep 1; done"]\n')
    # direct publishing: the old container stops in Start application (behind the proxy it
    # stops in Health check, after the switch)
    app = make_app("hello", files={"Dockerfile": stubborn},
                   spec_changes={"services": web(), "timeouts": {"start": 3}, "proxy": False})
    first = deploy_here(client, app.name)
    assert first.status is RunStatus.COMPLETED, first.error
    app.push({"site/index.html": "new version\n"}, "new version")
    run = check_failed(deploy_here(client, app.name), "Start application", "command-timeout",
                       "start-slow-stop")
    assert "step timed out after 3s (timeouts.start)" in run.error.message
    assert run.step("Start application").duration < 3 + 2, run.step("Start application").duration


# --- starting and health ------------------------------------------------------------------

def test_a_service_answering_a_byte_a_second_does_not_hold_the_health_step(client, make_app):
    # the service accepts the probe and sends one byte a second, for ever, never a line end:
    # every read gets something within any per-read timeout; only an overall deadline ends it
    dockerfile = ("FROM busybox:latest\n"
                  'CMD ["sh", "-c", "while true; do (while true; do printf H; sleep 1; done) '
                  '| nc -l -p 8080; done"]\n')
    app = make_app("hello", files={"Dockerfile": dockerfile}, spec_changes={
        "services": web(health_check={"type": "http", "path": "/", "timeout": 60,
                                      "interval": 0.2}),
        "timeouts": {"health": 4}})
    run = check_failed(deploy_here(client, app.name), "Health check", "command-timeout",
                       "health-drip")
    assert "timeouts.health" in run.error.message
    assert run.step("Health check").duration < 4 + 2, run.step("Health check").duration

def test_port_taken_by_a_container_is_port_in_use(client, make_app, docker_client):
    port = free_port()
    squatter = docker_client.containers.run(
        "busybox:latest", ["sleep", "300"], detach=True, init=True, ports={"9999/tcp": port},
        name=f"t-squatter-{uuid.uuid4().hex[:6]}")
    try:
        app = make_app("hello")
        app.application.services[0].host_port = port
        app.application.save(app.name, overwrite=True)
        run = check_failed(deploy_here(client, app.name), "Start application", "port-in-use",
                           "port-in-use-container")
    finally:
        squatter.remove(force=True)
    detail = run.error.suggestions[0].detail
    assert f"services[web].host_port of app {app.name} (now {port})" in detail
    assert "another container" in detail
    assert any(squatter.name in line for line in run.error.output_tail)


def test_port_taken_by_a_process_is_port_in_use_and_retry_starts_at_the_failed_step(
        client, make_app):
    port = free_port()
    squatter = listening(port)
    try:
        app = make_app("hello")
        app.application.services[0].host_port = port
        app.application.save(app.name, overwrite=True)
        failed = check_failed(deploy_here(client, app.name), "Start application", "port-in-use",
                              "port-in-use-process")
    finally:
        squatter.close()
    assert "another process" in failed.error.suggestions[0].detail
    # the same, as `deploy-runs show` prints it and as the Prefect UI shows it
    shown = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "show", str(failed.id)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for text in ("Start application failed", "Suggested fixes", "[port-in-use]",
                 f"Port {port} on the server is already in use"):
        assert text in shown.stdout, shown.stdout
    summary = summary_artifact(failed.id)
    for text in ("🔴 Start application failed", "| 🔴 | Start application | **Failed** |",
                 "~~Health check~~", "`port-in-use`", "### Suggested fixes"):
        assert text in summary, summary

    # The cause is gone: retry reuses the steps that completed with the same inputs, at the
    # failed run's commit though the branch has moved on since; from the CLI (no terminal:
    # plain lines as the run goes)
    app.push({"site/index.html": "the branch moved on\n"}, "the branch moved on")
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "retry", str(failed.id)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    retried_id = re.search(r"^run ([0-9a-f-]{36}) \(", done.stdout, re.M).group(1)
    assert "Start application: Completed in" in done.stdout, done.stdout
    retried = client.get_run(retried_id)
    assert retried.status is RunStatus.COMPLETED, retried.error
    assert retried.id != failed.id and retried.commit == failed.commit != app.commits[-1]
    assert retried.trigger == "retry"
    assert "the branch moved on" not in http_get(app.url())[1]
    for name in ("Provision server", "Fetch source", "Build images"):
        step = retried.step(name)
        assert step.status is StepStatus.SKIPPED, step
        assert str(failed.id) in (step.message or ""), step
    assert retried.step("Start application").status is StepStatus.COMPLETED
    assert retried.step("Health check").status is StepStatus.COMPLETED
    built = [line.text for line in client.logs(retried.id) if line.text.startswith("$ docker build")]
    assert built == []


def test_retry_after_a_config_change_runs_the_changed_steps_again(client, make_app):
    app = make_app("hello", spec_changes={"services": web(health_check={
        "type": "http", "path": "/missing", "timeout": 2, "interval": 0.2})})
    failed = check_failed(deploy_here(client, app.name), "Health check", "health-check-failed",
                          "health-check-failed")
    detail = failed.error.suggestions[0].detail
    assert "404" in detail and "services[web].health_check" in detail
    # fix the health check: Provision/Fetch/Build/Start inputs are unchanged, Health's changed
    app.application.services[0].health_check.path = "/"
    app.application.save(app.name, overwrite=True)
    retried = client.wait(client.retry(failed.id).id, timeout=180)
    assert retried.status is RunStatus.COMPLETED, retried.error
    assert [s.status for s in retried.steps] == [StepStatus.SKIPPED] * 4 + [StepStatus.COMPLETED]

    # change a runtime setting: Start runs again too
    app.application.services[0].env = {"GREETING": "changed"}
    app.application.services[0].health_check.path = "/missing"
    app.application.save(app.name, overwrite=True)
    failed2 = deploy_here(client, app.name)
    assert failed2.status is RunStatus.FAILED
    app.application.services[0].health_check.path = "/"
    app.application.services[0].env = {"GREETING": "changed again"}
    app.application.save(app.name, overwrite=True)
    retried2 = client.wait(client.retry(failed2.id).id, timeout=180)
    assert retried2.status is RunStatus.COMPLETED, retried2.error
    assert [s.status for s in retried2.steps[:3]] == [StepStatus.SKIPPED] * 3
    assert retried2.step("Start application").status is StepStatus.COMPLETED


def test_container_exiting_at_start_is_container_exited(client, make_app):
    dockerfile = ("FROM busybox:latest\n"
                  'CMD ["sh", "-c", "echo fatal: DATABASE_URL is not set >&2; exit 3"]\n')
    app = make_app("hello", files={"Dockerfile": dockerfile},
                   spec_changes={"services": web()})
    run = check_failed(deploy_here(client, app.name), "Health check", "container-exited",
                       "container-exited")
    kinds = [s.kind for s in run.error.suggestions]
    assert kinds[:2] == ["container-exited", "health-check-failed"]
    assert any("DATABASE_URL is not set" in line for line in run.error.output_tail)


def test_memory_hungry_container_is_out_of_memory(client, make_app):
    dockerfile = ("FROM busybox:latest\n"
                  "CMD [\"sh\", \"-c\", \"x=$(head -c 64m /dev/zero | tr '\\\\0' a); "
                  "httpd -f -p 8080\"]\n")
    app = make_app("hello", files={"Dockerfile": dockerfile},
                   spec_changes={"services": web(memory="8m")})
    run = check_failed(deploy_here(client, app.name), "Health check", "out-of-memory",
                       "out-of-memory")
    assert "services[web].memory (now 8m)" in run.error.suggestions[0].detail


# --- diagnosis beyond the rules: history and suggesters --------------------------------------

def test_a_repeated_failure_says_it_was_seen_before(client, make_app):
    app = make_app("hello")
    first = deploy_here(client, app.name, ref="release-41")
    assert first.error.suggestions[0].seen_before is None
    other = deploy_here(client, app.name, ref="hotfix")  # another failure: not the same
    assert other.error.suggestions[0].seen_before is None
    # the same failure, differing only in a volatile part (a number)
    third = deploy_here(client, app.name, ref="release-42")
    seen = third.error.suggestions[0].seen_before
    assert seen and seen.startswith("seen in 1 of the last 2 runs, first on "), seen
    assert first.error.signature == third.error.signature != other.error.signature


def test_registered_suggesters_add_or_replace_suggestions(client, make_app):
    calls = []

    def ai(failure, context):
        calls.append((failure.step, context.app_name, len(context.log_tail)))
        return [{"kind": "ai-hint", "title": "Ask the team", "detail": "ref typo?"}]

    def replacing(failure, context):
        return [Suggestion(kind="ai-only", title="Only this", detail="replaced")]

    app = make_app("hello")
    register_suggester(ai, name="chat-ai")
    try:
        run = deploy_here(client, app.name, ref="nope-1")
    finally:
        unregister_suggester(ai)
    assert [s.kind for s in run.error.suggestions] == ["git-ref-not-found", "ai-hint"]
    assert run.error.suggestions[1].source == "chat-ai"
    assert calls and calls[0][:2] == ("Fetch source", app.name)

    register_suggester(replacing, replace=True)
    try:
        run = deploy_here(client, app.name, ref="nope-2")
    finally:
        unregister_suggester(replacing)
    assert [s.kind for s in run.error.suggestions] == ["ai-only"]
