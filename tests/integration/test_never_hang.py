"""Never hang: a run whose worker (and its flow process) is killed ends Failed (Prefect's
Crashed) in bounded time, by Prefect's heartbeats and the automation deploy-runs installs, and
notifies as Failed; the app can be deployed again right away. (Timeouts, unreachable
servers, a stopped engine and a lost connection are in test_failures.py and test_logs.py.)"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deploy_runs import RunStatus, StepStatus
from deploy_runs.concurrency import LEASE_SECONDS, limit_name
from deploy_runs.heartbeat import WITHIN_SECONDS
from deploy_runs.prefect_local import start_worker

from .conftest import deployment_on_own_pool, slow_build_files, wait_for

pytestmark = pytest.mark.timeout(420)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_run_whose_worker_is_killed_ends_failed_in_bounded_time(client, make_app, prefect_api,
                                                                  tmp_path, webhook_receiver):
    marker = f"doomed{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(150, marker))
    # the team is told of the crash as of any failure (deploy_runs/notify.py)
    told = f"/crash-{marker}"
    client.add_notification(app.name, "Failed", webhook_receiver.block(told))
    healthy = make_app("hello")
    # This app's runs go to a pool of their own, served by a worker this test kills.
    pool, deployment_id = deployment_on_own_pool(app, "doomed")
    worker = start_worker(prefect_api, tmp_path, name="doomed", pool=pool)
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.create_flow_run_from_deployment(
            deployment_id, tags=["deploy-runs", f"app:{app.name}"])
    done = client.wait(client.deploy(healthy.name).id, timeout=180)
    assert done.status is RunStatus.COMPLETED, done.error

    wait_for(lambda: client.get_run(flow_run.id).step("Build images").status
             is StepStatus.RUNNING, 120, "the doomed run to be building")
    victims = [worker, *descendants(worker)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    # the dead run's hold on its application's slot (a Prefect concurrency lease) runs out
    def slot_free():
        with get_client(sync_client=True) as prefect:
            return prefect.read_global_concurrency_limit_by_name(
                limit_name(app.name)).active_slots == 0
    wait_for(slot_free, LEASE_SECONDS + 60, "the dead run's application slot to come back")
    freed = time.monotonic() - killed
    print(f"killed worker -> application slot free again in {freed:.1f}s")
    # the README: the lease runs out (60 s) and Prefect's reaper (every 15 s) gives it back
    assert freed <= LEASE_SECONDS + 15 + 5, freed

    run = wait_for(lambda: (lambda r: r if r.status is RunStatus.FAILED else None)(
        client.get_run(flow_run.id)), WITHIN_SECONDS + 60, "the dead run to end Failed")
    took = time.monotonic() - killed
    print(f"killed worker -> run Failed in {took:.1f}s")
    # the README's "about 90 s": no heartbeat for WITHIN_SECONDS since the last one (sent at
    # most HEARTBEAT_SECONDS before the kill), then Prefect's automation acts (seconds)
    assert took <= WITHIN_SECONDS + 15, took
    assert "heartbeat" in (run.message or ""), run.message
    assert run.step("Build images").status is StepStatus.FAILED
    assert run.step("Health check").status is StepStatus.SKIPPED
    messages = wait_for(lambda: webhook_receiver.at(told), 60, "the crash's notification")
    assert len(messages) == 1 and "Status: Failed" in messages[0]["body"].splitlines()
    assert str(flow_run.id) in messages[0]["body"] and "heartbeat" in messages[0]["body"]

    # nothing left behind: the app deploys again (now with a quick build), through the usual
    # worker; and the run that completed earlier was not touched by the automation
    app.push(slow_build_files(0, marker + "x"), "quick build")
    again = client.wait(client.deploy(app.name).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error
    assert client.get_run(done.id).status is RunStatus.COMPLETED
