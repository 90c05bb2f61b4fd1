"""Run controls - Pause, Resume, Stop - on worker runs and in-process runs, from the API, the
CLI and Prefect's own buttons (suspend, cancel)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.states import Running, Suspended

from deploy_runs import InvalidControl, RunNotFound, RunStatus, StepStatus
from deploy_runs.controls import CONTROL_LABEL, Checkpoint
from deploy_runs.status import STOPPED_STEP_MESSAGE

from .conftest import held, http_get, server_processes, slow_build_files, wait_for

pytestmark = pytest.mark.timeout(300)


def step_status(client, run_id, name):
    return client.get_run(run_id).step(name).status


def wait_step(client, run_id, name, status, timeout=90):
    wait_for(lambda: step_status(client, run_id, name) is status, timeout,
             f"{name} to be {status}")


def wait_status(client, run_id, status, timeout=90):
    return wait_for(lambda: (r := client.get_run(run_id)).status is status and r, timeout,
                    f"run to be {status}")


def build_commands(client, run_id):
    return [line.text for line in client.logs(run_id)
            if line.stream == "command" and line.text.startswith("$ docker build")]


def marker():
    return f"deploy-runs-marker-{uuid.uuid4().hex[:10]}"


def start_in_process(app_name: str, client, **params) -> str:
    """Run the flow directly in a process of its own (no worker, no deployment)."""
    args = ", ".join(f"{k}={v!r}" for k, v in {"app": app_name, **params}.items())
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from flows.deploy import run_in_process; run_in_process({args})"],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = wait_for(lambda: client.runs(app=app_name), 60, "the in-process run to appear")
    run = found[0]
    assert client.get_run(run.id).app == app_name
    return str(run.id), proc


@pytest.fixture(params=["worker", "in-process"])
def start(request, client):
    """Start a run either through the deployment and worker, or in-process."""

    def go(app, **params):
        if request.param == "worker":
            return str(client.deploy(app.name, **params).id), None
        return start_in_process(app.name, client, **params)

    go.mode = request.param
    return go


def test_pause_waits_after_the_running_step_and_resume_continues_from_the_next(
        client, make_app, start):
    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark))
    run_id, _ = start(app)
    with held(mark):  # the build cannot end before the pause is requested
        paused = client.pause(run_id)
        assert paused.status is RunStatus.IN_PROGRESS, "the running step finishes first"
        assert client.pause(run_id).status is RunStatus.IN_PROGRESS, "pausing twice = once"

    wait_status(client, run_id, RunStatus.PAUSED)
    # Prefect records task-run states asynchronously: the step's may trail the run's a little.
    wait_step(client, run_id, "Build images", StepStatus.COMPLETED, timeout=10)
    run = client.get_run(run_id)
    assert run.status is RunStatus.PAUSED
    assert run.step("Start application").status is StepStatus.PENDING
    assert client.pause(run_id).status is RunStatus.PAUSED, "pausing a paused run is a no-op"

    resumed = client.resume(run_id)
    assert resumed.status in (RunStatus.IN_PROGRESS, RunStatus.PAUSED)
    run = client.wait(run_id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    assert [s.status for s in run.steps] == [StepStatus.COMPLETED] * 5
    assert len(build_commands(client, run_id)) == 1
    assert http_get(app.url())[0] == 200


def test_pause_requested_before_the_first_step_waits_before_it(client, make_app):
    app = make_app("hello")
    run = client.deploy(app.name)
    client.pause(run.id)
    run = wait_status(client, run.id, RunStatus.PAUSED)
    assert [s.status for s in run.steps] == [StepStatus.PENDING] * 5
    client.resume(run.id)
    assert client.wait(run.id, timeout=120).status is RunStatus.COMPLETED


def test_prefect_suspend_then_resume_does_not_run_finished_steps_again(client, make_app):
    """The Prefect UI's Pause button suspends a deployment run: the flow process exits and
    Prefect starts the flow from the top on Resume."""
    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark))
    run = client.deploy(app.name)
    with held(mark):  # suspended while the build runs
        suspend_flow_run(flow_run_id=run.id, timeout=300)
    run = wait_status(client, run.id, RunStatus.PAUSED)
    wait_step(client, run.id, "Build images", StepStatus.COMPLETED)
    assert client.get_run(run.id).step("Start application").status is StepStatus.PENDING

    client.resume(run.id)
    run = client.wait(run.id, timeout=120)
    assert run.status is RunStatus.COMPLETED, run.error
    logs = list(client.logs(run.id))
    assert len(build_commands(client, run.id)) == 1
    clones = [line for line in logs if line.stream == "command" and " clone " in line.text]
    assert len(clones) == 1, "Fetch source ran once"
    # and the finished steps did not run again at all (they would find their work done)
    said = [line.text for line in logs]
    assert sum("deploying commit" in text for text in said) == 1, "Fetch source ran again"
    assert not any("reusing image" in text for text in said), "Build images ran again"
    assert http_get(app.url())[0] == 200


def test_a_process_whose_run_was_suspended_and_resumed_meanwhile_ends_before_the_next_step(
        client):
    """The race behind a CI failure: Prefect sets task states in the flow's process, and the
    process learns of a suspend late at times; if Resume has already started the flow again
    elsewhere, the run is Running again and nothing tells this process to stop. Here the flow
    run goes Suspended and then Running (the new process) between two steps of this process:
    the check before the next step ends this process with Prefect's Pause signal."""
    done = []

    @task(name="Fetch source")
    def a_step() -> None:
        done.append("a step")

    @flow(name="guard-check")
    def late_process() -> None:
        flow_run = get_run_context().flow_run
        checkpoint = Checkpoint(flow_run.id, 60, began=flow_run.state)
        assert not checkpoint.before_step("Fetch source").stop  # this process owns the run
        a_step()
        with get_client(sync_client=True) as api:
            api.set_flow_run_state(flow_run.id, Suspended(timeout_seconds=300), force=True)
            api.set_flow_run_state(flow_run.id, Running(), force=True)
        checkpoint.before_step("Fetch source")
        a_step()

    with pytest.raises(Pause) as ended:
        late_process()
    assert done == ["a step"], "the step after the suspend did not run here"
    assert ended.value.state.name == "Suspended"


@pytest.mark.builds
def test_stop_during_a_long_remote_command_kills_it_and_skips_the_rest(client, make_app, start):
    mark = marker()
    app = make_app("hello", files=slow_build_files(120, mark))
    run_id, proc = start(app)
    wait_for(lambda: server_processes(mark), 90, "the slow build command on the server")
    # the whole process group goes: the RUN's command and the docker build client too
    client_process = f"docker build --tag deploy-runs/{app.name}-web:"
    assert server_processes(client_process), "the docker build client runs on the server"

    client.stop(run_id)

    run = wait_status(client, run_id, RunStatus.STOPPED, timeout=15)
    wait_for(lambda: not server_processes(mark), 15, "the remote command to be gone")
    wait_for(lambda: not server_processes(client_process), 15, "the docker build client to go")
    assert [(s.name, s.status) for s in run.steps] == [
        ("Provision server", StepStatus.COMPLETED),
        ("Fetch source", StepStatus.COMPLETED),
        ("Build images", StepStatus.FAILED),
        ("Start application", StepStatus.SKIPPED),
        ("Health check", StepStatus.SKIPPED),
    ]
    assert run.step("Build images").message == STOPPED_STEP_MESSAGE
    assert run.error is None, "a stopped run did not break"
    if proc:
        proc.wait(timeout=30)  # the in-process run's process ends by itself


def test_prefect_cancel_is_stop_and_reaches_the_remote_command(client, make_app, start):
    mark = marker()
    app = make_app("hello", files=slow_build_files(120, mark))
    run_id, _ = start(app)
    wait_for(lambda: server_processes(mark), 90, "the slow build command on the server")

    subprocess.run([sys.executable, "-m", "prefect", "flow-run", "cancel", run_id],
                   check=True, capture_output=True, timeout=60)

    run = wait_status(client, run_id, RunStatus.STOPPED, timeout=30)
    wait_for(lambda: not server_processes(mark), 15, "the remote command to be gone")
    assert run.step("Build images").status is StepStatus.FAILED
    assert run.step("Start application").status is StepStatus.SKIPPED


def test_stop_a_paused_run(client, make_app, start):
    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark))
    run_id, _ = start(app)
    # the request lands while a step runs (a whole deploy of hello can end within a second)
    with held(mark):
        client.pause(run_id)
    wait_status(client, run_id, RunStatus.PAUSED)
    client.stop(run_id)
    run = client.wait(run_id, timeout=15)  # waits for the steps' states to settle too
    assert run.status is RunStatus.STOPPED
    assert all(s.status in (StepStatus.COMPLETED, StepStatus.SKIPPED) for s in run.steps)
    assert "while paused" in run.message


def test_stop_a_suspended_run(client, make_app):
    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark))
    run = client.deploy(app.name)
    with held(mark):  # suspended while the build runs
        suspend_flow_run(flow_run_id=run.id, timeout=300)
    wait_status(client, run.id, RunStatus.PAUSED)
    wait_step(client, run.id, "Build images", StepStatus.COMPLETED)
    client.stop(run.id)
    run = wait_status(client, run.id, RunStatus.STOPPED, timeout=15)
    assert run.step("Start application").status is StepStatus.SKIPPED


def test_a_pause_that_times_out_ends_stopped_not_failed(client, make_app, start):
    app = make_app("hello")
    run_id, _ = start(app, pause_timeout=2)
    client.pause(run_id)
    run = client.wait(run_id, timeout=120)
    assert run.status is RunStatus.STOPPED
    assert "pause timeout (2s)" in run.message
    assert run.error is None


def test_controls_that_do_not_apply_are_refused_and_change_nothing(client, make_app):
    app = make_app("hello")
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.COMPLETED
    for control in (client.pause, client.stop, client.resume):
        with pytest.raises(InvalidControl, match=r"already ended|not Paused"):
            control(run.id)
    assert client.get_run(run.id) == run
    with pytest.raises(RunNotFound):
        client.pause(str(uuid.uuid4()))
    with pytest.raises(RunNotFound):
        client.stop("nonsense")


def test_resume_of_a_running_run_is_refused(client, make_app):
    mark = marker()
    app = make_app("hello", files=slow_build_files(120, mark))
    run = client.deploy(app.name)
    wait_for(lambda: server_processes(mark), 90, "the slow build command on the server")
    with pytest.raises(InvalidControl, match="is In Progress, not Paused"):
        client.resume(run.id)
    with get_client(sync_client=True) as prefect:
        assert not (prefect.read_flow_run(run.id).labels or {}).get(CONTROL_LABEL)
    client.stop(run.id)
    wait_status(client, run.id, RunStatus.STOPPED, timeout=15)


def test_cli_controls_exit_non_zero_with_the_reason(client, make_app):
    app = make_app("hello")
    run = client.wait(client.deploy(app.name).id, timeout=120)
    for control in ("pause", "resume", "stop"):
        done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", control, str(run.id)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "cannot" in done.stderr and str(run.id) in done.stderr


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy_runs.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def under_a_terminal(argv: list[str]) -> tuple[subprocess.Popen, list[bytes]]:
    """Start `argv` with a pseudo-terminal as its stdin/stdout/stderr; what it draws is
    collected in the returned list as it comes."""
    import pty
    import threading

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn.append(chunk)
        os.close(master)

    threading.Thread(target=read, daemon=True).start()
    return proc, drawn


def test_the_cli_pauses_shows_resumes_follows_and_stops_live_runs(client, make_app):
    import json
    import re

    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark))
    # `deploy` under a terminal: the live step view
    deploy, drawn = under_a_terminal([sys.executable, "-m", "deploy_runs.cli", "deploy", app.name])
    run = wait_for(lambda: next(iter(client.runs(app=app.name)), None), 60, "the run to exist")
    with held(mark):  # the build cannot end before the pause is requested
        # `logs -f` from the start, until the run ends
        follower = subprocess.Popen([sys.executable, "-m", "deploy_runs.cli", "logs", "-f",
                                     str(run.id)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        paused = cli("pause", str(run.id))
        assert paused.returncode == 0, paused.stderr
    wait_status(client, run.id, RunStatus.PAUSED)  # once the running build has ended
    shown = cli("show", str(run.id), "--json")
    assert shown.returncode == 0, shown.stderr
    as_json = json.loads(shown.stdout)
    assert as_json["id"] == str(run.id) and as_json["status"] == "Paused"
    assert {s["name"]: s["status"] for s in as_json["steps"]}["Build images"] == "Completed"
    assert {s["name"]: s["status"] for s in as_json["steps"]}["Start application"] == "Pending"

    resumed = cli("resume", str(run.id))
    assert resumed.returncode == 0, resumed.stderr
    done = client.wait(run.id, timeout=120)
    assert done.status is RunStatus.COMPLETED, done.error
    assert deploy.wait(timeout=60) == 0  # the CLI's exit code: 0 only when the run completed
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(drawn).decode(errors="replace"))
    for seen in ("Provision server", "Build images", "Health check", "Paused", "Completed",
                 f"deploy-runs/{app.name}-web:", "rebuilt (first build)"):
        assert seen in screen, (seen, screen[-3000:])

    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert "── Build images ──" in out and mark in out
    assert out.index("── Build images ──") < out.index("── Health check ──")

    # `stop` on a live run: the remote command goes, the run ends Stopped
    mark = marker()
    app.push(slow_build_files(120, mark), "a long build")
    run = client.deploy(app.name)
    wait_for(lambda: server_processes(mark), 90, "the long build command on the server")
    stopped = cli("stop", str(run.id))
    assert stopped.returncode == 0, stopped.stderr
    assert wait_status(client, run.id, RunStatus.STOPPED, timeout=30)
    wait_for(lambda: not server_processes(mark), 15, "the build command to be killed")


def test_paused_time_does_not_count_toward_the_run_time_limit(client, make_app):
    import time

    mark = marker()
    app = make_app("hello", files=slow_build_files(1, mark),
                   spec_changes={"timeouts": {"run": 15}})
    run = client.deploy(app.name)
    with held(mark):  # paused while the build runs
        client.pause(run.id)
    wait_status(client, run.id, RunStatus.PAUSED)
    time.sleep(16)  # the scenario: paused longer than the run's whole time limit
    client.resume(run.id)
    done = client.wait(run.id, timeout=120)
    assert done.status is RunStatus.COMPLETED, (done.message, done.error)
    assert done.duration > 15, done.duration  # longer than the limit, counting the pause
