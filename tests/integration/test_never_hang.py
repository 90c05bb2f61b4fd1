"""Never hang: a run whose worker (and its flow process) is killed ends Failed (Prefect's
Crashed) in bounded time, by Prefect's heartbeats and the automation deploy-runs installs, and
notifies as Failed; the app can be deployed again right away. (Timeouts, unreachable
servers, a stopped engine and a lost connection are in test_failures.py and test_logs.py.)

Prefect's heartbeat (30 s at least) and the automation's window make this a wait of about two
minutes, which nothing can shorten but overlap: `CrashWatch` kills the worker when the
session's first integration test begins (tests/integration/conftest.py), watches in a thread
when the slot comes back and the run ends, and the test checks the times it recorded."""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
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


@dataclass
class CrashWatch:
    """A run whose worker is killed mid-build, watched in a thread: when the worker was killed,
    when the run's application slot came back and when the run ended Failed (time.monotonic()
    values), or what went wrong."""

    app: object
    healthy: object
    told: str
    killed: float | None = None
    freed: float | None = None
    failed: float | None = None
    done: object = None  # the healthy app's run, Completed before the kill
    flow_run_id: object = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def watch(self, client, prefect_api: str, state: Path) -> None:
        try:
            pool, deployment_id = deployment_on_own_pool(self.app, "doomed")
            worker = start_worker(prefect_api, state, name="doomed", pool=pool)
            with get_client(sync_client=True) as prefect:
                self.flow_run_id = prefect.create_flow_run_from_deployment(
                    deployment_id, tags=["deploy-runs", f"app:{self.app.name}"]).id
            self.done = client.wait(client.deploy(self.healthy.name).id, timeout=180)
            wait_for(lambda: client.get_run(self.flow_run_id).step("Build images").status
                     is StepStatus.RUNNING, 120, "the doomed run to be building", interval=0.5)
            for pid in [worker, *descendants(worker)]:
                os.kill(pid, signal.SIGKILL)
            self.killed = time.monotonic()

            # the dead run's hold on its application's slot (a Prefect concurrency lease)
            # runs out, and the run ends Failed
            def slot_free() -> bool:
                with get_client(sync_client=True) as prefect:
                    return prefect.read_global_concurrency_limit_by_name(
                        limit_name(self.app.name)).active_slots == 0

            deadline = self.killed + max(LEASE_SECONDS, WITHIN_SECONDS) + 90
            while (self.freed is None or self.failed is None) and time.monotonic() < deadline:
                if self.freed is None and slot_free():
                    self.freed = time.monotonic()
                if self.failed is None and \
                        client.get_run(self.flow_run_id).status is RunStatus.FAILED:
                    self.failed = time.monotonic()
                time.sleep(0.5)
        except BaseException as exc:  # raised again by the test
            self.error = exc

    @classmethod
    def start(cls, client, make_app, prefect_api: str, state: Path, webhook_receiver):
        marker = f"doomed{uuid.uuid4().hex[:8]}"
        app = make_app("hello", files=slow_build_files(150, marker))
        # the team is told of the crash as of any failure (deploy_runs/notify.py)
        told = f"/crash-{marker}"
        client.add_notification(app.name, "Failed", webhook_receiver.block(told))
        watch = cls(app, make_app("hello"), told)
        # in this thread's Prefect settings (the test server's API)
        watch.thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(watch.watch, client, prefect_api, state), daemon=True)
        watch.thread.start()
        return watch


def test_a_run_whose_worker_is_killed_ends_failed_in_bounded_time(client, crash_watch,
                                                                  webhook_receiver):
    watch: CrashWatch = crash_watch
    watch.thread.join(timeout=300)  # about 130 s when this test runs alone
    assert not watch.thread.is_alive(), "the watch did not end"
    if watch.error:
        raise watch.error
    assert watch.done.status is RunStatus.COMPLETED, watch.done.error
    assert watch.freed is not None, "the dead run's application slot never came back"
    freed = watch.freed - watch.killed
    print(f"killed worker -> application slot free again in {freed:.1f}s")
    # the README: the lease runs out (60 s) and Prefect's reaper (every 15 s) gives it back
    assert freed <= LEASE_SECONDS + 15 + 5, freed

    assert watch.failed is not None, "the dead run never ended Failed"
    took = watch.failed - watch.killed
    print(f"killed worker -> run Failed in {took:.1f}s")
    # the README's "about 90 s": no heartbeat for WITHIN_SECONDS since the last one (sent at
    # most HEARTBEAT_SECONDS before the kill), then Prefect's automation acts (seconds)
    assert took <= WITHIN_SECONDS + 15, took
    run = client.get_run(watch.flow_run_id)
    assert "heartbeat" in (run.message or ""), run.message
    assert run.step("Build images").status is StepStatus.FAILED
    assert run.step("Health check").status is StepStatus.SKIPPED
    messages = wait_for(lambda: webhook_receiver.at(watch.told), 60, "the crash's notification")
    assert len(messages) == 1 and "Status: Failed" in messages[0]["body"].splitlines()
    assert str(watch.flow_run_id) in messages[0]["body"] and "heartbeat" in messages[0]["body"]

    # nothing left behind: the app deploys again (now with a quick build), through the usual
    # worker; and the run that completed earlier was not touched by the automation
    app = watch.app
    app.push(slow_build_files(0, f"quick{uuid.uuid4().hex[:8]}"), "quick build")
    again = client.wait(client.deploy(app.name).id, timeout=180)
    assert again.status is RunStatus.COMPLETED, again.error
    assert client.get_run(watch.done.id).status is RunStatus.COMPLETED
