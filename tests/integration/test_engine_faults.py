"""The engine's own faults end in known states: the Prefect server stopped or killed during a
build, the worker stopped during a run, a slot counted while nobody holds it. Each runs against
a Prefect server and worker of its own (on SQLite), restarted by the test, deploying to the
real sandbox.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.settings import PREFECT_API_URL, temporary_settings

from deploy_runs import (
    APIUnavailable,
    DeployRuns,
    NoWorker,
    RunStatus,
    StepStatus,
    WaitTimeout,
    sandbox,
)
from deploy_runs.concurrency import HELD, LEASE_LABEL, SLOT_LABEL, limit_name
from deploy_runs.prefect_local import healthy, start_server, start_worker, stop
from deploy_runs.sandbox_blocks import save_server_blocks

from .conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(600)

OUTAGE_SECONDS = 10  # how long the engine part is away (the issue: 10-30 s)
# the build prints a line every 0.25 s: 55 s, outlasting two outages and restarts and the
# ticks logged between them
TWO_OUTAGE_TICKS = 220
FREED = "slot held by no active run; freed"


@dataclass
class Engine:
    url: str
    port: int
    state: Path  # PID files and logs of this server and its worker

    def restart_server(self, sig: signal.Signals,
                       meanwhile: Callable[[], None] = lambda: None) -> float:
        """Stop the server with `sig`, call `meanwhile`, keep it away OUTAGE_SECONDS in all,
        start it again; the time it answered again (time.monotonic())."""
        assert stop(self.state, only=("server",), sig=sig) == ["server"]
        away = time.monotonic()
        assert not healthy(self.url, timeout=0.5)
        meanwhile()
        # the outage itself, not a wait for something
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - away)))
        start_server(self.port, self.state)
        return time.monotonic()


@pytest.fixture(scope="module")
def engine(sandbox_info: sandbox.SandboxInfo, migrated_database,
           tmp_path_factory) -> Iterator[Engine]:
    state: Path = migrated_database(tmp_path_factory.mktemp("engine"))
    port = free_port()
    try:
        url = start_server(port, state)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            save_server_blocks(sandbox_info)
            start_worker(url, state)
            yield Engine(url, port, state)
    finally:
        stop(state)


def ticking_build(ticks: int, marker: str) -> dict[str, str]:
    """The hello image, whose build prints `tick-1`..`tick-N`, one every 0.25 s."""
    return {"Dockerfile": (
        "FROM busybox:latest\n"
        f"RUN echo {marker} && for i in $(seq 1 {ticks}); do echo tick-$i; sleep 0.25; done\n"
        "COPY site/ /www/\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')}


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def ignores_sigterm(pid: int) -> bool:
    mask = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def ticks_logged(client: DeployRuns, run_id) -> list[int]:
    return [int(line.text.removeprefix("tick-")) for line in client.logs(run_id)
            if line.text.startswith("tick-") and line.text[5:].isdigit()]


def building(client: DeployRuns, run_id, ticks: int = 3) -> bool:
    run = client.get_run(run_id)
    return (run.step("Build images").status is StepStatus.RUNNING
            and len(ticks_logged(client, run_id)) >= ticks)


def test_apps_add_installs_the_crash_automation(engine, tmp_path):
    """The automation that ends runs whose process died (deploy_runs/heartbeat.py) comes with
    `deploy-runs apps add`, on a server that does not have it yet."""
    from prefect.automations import Automation

    from deploy_runs.heartbeat import AUTOMATION_NAME, WITHIN_SECONDS

    with contextlib.suppress(ValueError):
        Automation.read(name=AUTOMATION_NAME).delete()
    with pytest.raises(ValueError):
        Automation.read(name=AUTOMATION_NAME)
    spec = tmp_path / "app.yaml"
    spec.write_text(f"name: t-auto-{uuid4().hex[:6]}\nrepository: git://127.0.0.1:9418/x.git\n"
                    "server: sandbox-local\nservices:\n  - {name: web, container_port: 8080, "
                    "host_port: 18123}\n")
    added = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "apps", "add", str(spec)],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PREFECT_API_URL": engine.url})
    assert added.returncode == 0, added.stdout + added.stderr
    # and says how to deploy on push: the receiver's path and the secret's block (made now)
    name = spec.read_text().split()[1]
    said = " ".join(added.stdout.split())
    assert ":8787/push" in said and f"Prefect Secret block deploy-runs-webhook-{name}" in said
    secret = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "webhooks", "secret", name],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PREFECT_API_URL": engine.url})
    assert secret.returncode == 0 and len(secret.stdout.strip()) >= 40, secret.stderr
    automation = Automation.read(name=AUTOMATION_NAME)
    assert automation.enabled
    assert automation.trigger.within.total_seconds() == WITHIN_SECONDS
    assert [a.type for a in automation.actions] == ["change-flow-run-state"]


def test_a_server_stopped_then_killed_during_a_build_loses_no_line_and_leaks_no_slot(
        engine, make_app):
    """Two outages in one build, one after the other: the server stopped (SIGTERM), then,
    once the run has logged again, killed (SIGKILL)."""
    client = DeployRuns()
    app = make_app("hello", files=ticking_build(TWO_OUTAGE_TICKS, uuid4().hex))
    run = client.deploy(app.name)
    wait_for(lambda: building(client, run.id), 120, "the build to be printing")
    # a follower of the run's log, attached before the outage, resumes where it was
    followed: list[str] = []
    follower = threading.Thread(target=contextvars.copy_context().run, args=(
        lambda: followed.extend(line.text for line in client.logs(run.id, follow=True)),))
    follower.start()
    wait_for(lambda: followed, 60, "the follower to read the log")

    def while_away() -> None:
        # the Python API and the CLI fail fast, naming the API's URL
        began = time.monotonic()
        with pytest.raises(APIUnavailable, match=re.escape(f"Prefect API at {engine.url} "
                                                           "does not answer")):
            client.get_run(run.id)
        took = time.monotonic() - began
        print(f"get_run failed {took:.1f}s after it was called")
        assert took < 10, took  # fails fast (the README: about 1.5 s), no hang
        shown = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "show", str(run.id)],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PREFECT_API_URL": engine.url})
        assert shown.returncode == 2, shown.stdout + shown.stderr
        assert "does not answer" in shown.stderr and "Traceback" not in shown.stderr

    engine.restart_server(signal.SIGTERM, while_away)
    # the run goes on logging once the server is back, and the follower with it
    logged = len(ticks_logged(client, run.id))
    wait_for(lambda: len(ticks_logged(client, run.id)) >= logged + 8, 60,
             "the build to log again after the first outage")
    back = engine.restart_server(signal.SIGKILL)
    done = client.wait(run.id, timeout=240)
    assert done.status is RunStatus.COMPLETED, (done.message, done.error)
    build = done.step("Build images")
    assert build.status is StepStatus.COMPLETED
    # the outage really was inside the build: it ended after the server was back
    assert build.ended_at is not None
    assert build.ended_at.timestamp() > time.time() - (time.monotonic() - back), \
        "the build ended before the server came back: make TWO_OUTAGE_TICKS larger"
    every = list(range(1, TWO_OUTAGE_TICKS + 1))
    assert ticks_logged(client, run.id) == every  # none lost or doubled
    follower.join(timeout=60)
    assert not follower.is_alive(), "the follower did not end with the run"
    assert [int(t[5:]) for t in followed if t.startswith("tick-")] == every

    # the next deploy of the app takes the slot at once: nothing held it after the outage
    app.push({"Dockerfile": ticking_build(1, uuid4().hex)["Dockerfile"]}, "quick build")
    again = client.wait(client.deploy(app.name).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error
    texts = [line.text for line in client.logs(again.id)]
    assert not [t for t in texts if "Waiting for" in t or FREED in t], texts[:20]
    with get_client(sync_client=True) as prefect:
        assert prefect.read_global_concurrency_limit_by_name(
            limit_name(app.name)).active_slots == 0


def test_a_worker_stopped_during_a_run_lets_the_run_finish_and_record_what_happened(
        engine, make_app):
    client = DeployRuns()
    app = make_app("hello", files=ticking_build(40, uuid4().hex))
    run = client.deploy(app.name)
    wait_for(lambda: building(client, run.id), 120, "the build to be printing")
    # a wait shorter than the run raises WaitTimeout (the README's error tree), saying so
    with pytest.raises(WaitTimeout, match=f"run {run.id} is still In Progress after 0.5s"):
        client.wait(run.id, timeout=0.5)

    # the worker's fork server ignores SIGTERM (a signal to the worker's group must not end it
    # before the worker has let the run go), the run's process does not
    worker = int((engine.state / "worker.pid").read_text())
    (forkserver,) = [pid for pid in children(worker) if "forkserver" in cmdline(pid)]
    (run_process,) = children(forkserver)
    assert ignores_sigterm(forkserver) and not ignores_sigterm(run_process)

    assert stop(engine.state, only=("worker",)) == ["worker"]  # SIGTERM, as an upgrade does
    start_worker(engine.url, engine.state)

    done = client.wait(run.id, timeout=240)
    assert done.status is RunStatus.COMPLETED, (done.message, done.error)
    assert all(s.status in (StepStatus.COMPLETED, StepStatus.SKIPPED) for s in done.steps), \
        [(s.name, s.status) for s in done.steps]
    assert ticks_logged(client, run.id) == list(range(1, 41))
    # and the app's next run is picked up by the new worker
    again = client.wait(client.deploy(app.name).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error


def test_a_slot_counted_with_no_holder_is_freed_by_the_next_run(engine, make_app):
    """A slot counted while no run holds it (what a server that lost its leases leaves) is
    freed by the run waiting for it, ORPHAN_GRACE_SECONDS after it first saw it so."""
    client = DeployRuns()
    app = make_app("hello")
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    with get_client(sync_client=True) as prefect:
        # the slot counted taken, with no lease (as after a restart of a server whose leases
        # were in memory)
        prefect.request("POST", "/v2/concurrency_limits/increment", json={
            "names": [limit_name(app.name)], "slots": 1, "mode": "concurrency"})
        assert prefect.read_global_concurrency_limit_by_name(
            limit_name(app.name)).active_slots == 1
    began = time.monotonic()
    again = client.wait(client.deploy(app.name).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error
    freed = [line for line in client.logs(again.id) if FREED in line.text]
    assert len(freed) == 1, freed
    print(f"orphan slot freed and the run completed in {time.monotonic() - began:.1f}s")


def test_a_slot_still_held_by_an_ended_run_is_freed_at_once(engine, make_app):
    """A run that ended still labelled the holder, its lease alive (its release never reached
    the server): the next run releases that lease at once."""
    client = DeployRuns()
    app = make_app("hello")
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    with get_client(sync_client=True) as prefect:
        taken = prefect.request("POST", "/v2/concurrency_limits/increment-with-lease", json={
            "names": [limit_name(app.name)], "slots": 1, "mode": "concurrency",
            "lease_duration": 600, "holder": ConcurrencyLeaseHolder(
                type="flow_run", id=first.id).model_dump(mode="json")}).json()
        prefect.update_flow_run_labels(first.id, {SLOT_LABEL: HELD, LEASE_LABEL: taken["lease_id"]})
    again = client.wait(client.deploy(app.name).id, timeout=60)
    assert again.status is RunStatus.COMPLETED, again.error
    freed = [line.text for line in client.logs(again.id) if FREED in line.text]
    assert len(freed) == 1 and str(first.id) in freed[0], freed
    assert client.get_run(first.id).status is RunStatus.COMPLETED  # its record untouched


def test_no_worker_is_said_while_the_run_waits_and_a_deploy_can_refuse_at_once(engine, make_app):
    client = DeployRuns()
    app = make_app("hello")
    assert stop(engine.state, only=("worker",)) == ["worker"]
    # `deploy-runs deploy` without a terminal: plain lines as the run goes
    env = {**os.environ, "PREFECT_API_URL": engine.url, "COLUMNS": "200"}
    cli = subprocess.Popen([sys.executable, "-m", "deploy_runs.cli", "deploy", app.name],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines: list[str] = []

        def said(text: str) -> bool:
            line = cli.stdout.readline()
            lines.append(line)
            return text in line
        wait_for(lambda: said("Started"), 60, "the CLI to say the run started")
        run_id = lines[-1].split()[1]
        run = wait_for(lambda: (lambda r: r if r.waiting_reason else None)(
            client.get_run(run_id)), 60, "the run to say why it waits")
        assert "No worker serves work pool 'deploy-runs'" in run.waiting_reason
        assert "deploy-runs worker --pool deploy-runs" in run.waiting_reason
        assert run.status is RunStatus.STARTED
        wait_for(lambda: said("waiting: No worker serves work pool 'deploy-runs'"), 30,
                 "the CLI to say no worker serves the pool")
        shown = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "show", run_id],
                               capture_output=True, text=True, env=env, timeout=60)
        assert "No worker serves work pool 'deploy-runs'" in shown.stdout, shown.stdout

        # a worker comes: the run starts and ends; the CLI said each step as it went
        start_worker(engine.url, engine.state)
        out, _ = cli.communicate(timeout=180)
        lines += out.splitlines()
        assert cli.returncode == 0, "".join(lines)
        assert any(line.strip() == "Build images: Running" for line in lines), lines
        assert any(line.strip().startswith("Health check: Completed in") for line in lines)
    finally:
        if cli.poll() is None:
            cli.kill()

    # an app that asks for a worker within 5 s is refused at once while none serves its pool
    strict = make_app("hello", spec_changes={"require_worker_seconds": 5})
    assert stop(engine.state, only=("worker",)) == ["worker"]
    try:
        def last_polled_ago() -> float:
            with get_client(sync_client=True) as prefect:
                queues = prefect.read_work_queues(work_pool_name="deploy-runs")
            polled = max(q.last_polled for q in queues if q.last_polled)
            return (datetime.now(UTC) - polled).total_seconds()
        wait_for(lambda: last_polled_ago() > 5.5, 30, "the pool to have no worker for 5 s")
        with pytest.raises(NoWorker) as refused:
            client.deploy(strict.name)
        assert "No worker serves work pool 'deploy-runs'" in str(refused.value)
        assert "require_worker_seconds: 5" in str(refused.value)
        assert client.runs(app=strict.name) == []  # refused before any run was made
    finally:
        start_worker(engine.url, engine.state)
