"""One active run per application (Prefect global concurrency limits): queue in request order,
replace, reject; a paused run keeps its slot; other applications run in parallel."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from deploy_runs import AppBusy, RunStatus
from deploy_runs.client import deployment_name

from .conftest import held, slow_build_files, wait_for

pytestmark = pytest.mark.timeout(300)


def status(client, run_id):
    return client.get_run(run_id).status


def logged(client, run_id, text):
    return any(text in line.text for line in client.logs(run_id))


def first_step_start(run):
    return min(s.started_at for s in run.steps if s.started_at)


def last_step_end(run):
    return max(s.ended_at for s in run.steps if s.ended_at)


def test_queue_runs_one_at_a_time_in_request_order_other_apps_in_parallel(client, make_app):
    mark = f"q{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(1, mark))
    other = make_app("hello")

    first = client.deploy(app.name)
    with held(mark):  # the first run's build cannot end while the others are looked at
        second = client.deploy(app.name)
        third = client.deploy(app.name)  # two runs wait: in the order they were requested
        parallel = client.deploy(other.name)

        # the other application does not wait: it gets going while the first run still builds
        wait_for(lambda: status(client, parallel.id) is not RunStatus.STARTED, 60,
                 "the other app's run to begin")
        assert status(client, first.id) is RunStatus.IN_PROGRESS
        # the second run of the same app waits, Started, and says for which run
        wait_for(lambda: logged(client, second.id, f"Waiting for run {first.id}"), 60,
                 "the second run to say what it waits for")
        assert status(client, second.id) is RunStatus.STARTED
        assert all(s.started_at is None for s in client.get_run(second.id).steps)
        assert status(client, third.id) is RunStatus.STARTED

    first, second, third, parallel = (client.wait(r.id, timeout=240)
                                      for r in (first, second, third, parallel))
    assert [r.status for r in (first, second, third, parallel)] == [RunStatus.COMPLETED] * 4
    assert first_step_start(second) >= last_step_end(first), "runs of one app overlapped"
    assert first_step_start(third) >= last_step_end(second), "not in request order"
    assert first_step_start(parallel) < last_step_end(first), "other apps must not wait"


def test_a_paused_run_keeps_its_slot(client, make_app):
    app = make_app("hello")
    first = client.deploy(app.name)
    client.pause(first.id)
    wait_for(lambda: status(client, first.id) is RunStatus.PAUSED, 90, "first to pause")

    second = client.deploy(app.name)
    wait_for(lambda: logged(client, second.id, f"Waiting for run {first.id}"), 60,
             "the second run to wait for the paused one")
    assert status(client, second.id) is RunStatus.STARTED
    assert status(client, first.id) is RunStatus.PAUSED

    client.resume(first.id)
    first, second = (client.wait(r.id, timeout=180) for r in (first, second))
    assert first.status is second.status is RunStatus.COMPLETED
    assert first_step_start(second) >= last_step_end(first)


def test_replace_stops_the_older_waiting_run_and_the_latest_request_wins(client, make_app):
    mark = f"r{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(1, mark),
                   spec_changes={"concurrency": "replace"})
    first = client.deploy(app.name)
    with held(mark):  # the first run builds until the older run has been replaced
        older = client.deploy(app.name)
        wait_for(lambda: logged(client, older.id, "Waiting for run"), 60, "the older to wait")
        latest = client.deploy(app.name)
        older = client.wait(older.id, timeout=60)
    assert older.status is RunStatus.STOPPED
    assert f"Replaced by a newer run of the application: {latest.id}" in older.message
    assert all(s.started_at is None for s in older.steps), "a replaced run never ran a step"
    first, latest = (client.wait(r.id, timeout=180) for r in (first, latest))
    assert first.status is latest.status is RunStatus.COMPLETED
    assert first_step_start(latest) >= last_step_end(first)


def test_reject_refuses_a_second_run_naming_the_active_one(client, make_app, prefect_api):
    mark = f"j{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(1, mark),
                   spec_changes={"concurrency": "reject"})
    first = client.deploy(app.name)
    with held(mark):  # the first run is active until both refusals are seen
        with pytest.raises(AppBusy, match=f"already has an active run: {first.id}"):
            client.deploy(app.name)
        # a run requested around our API (Prefect's `deployment run`, the UI) is refused by
        # the flow itself, before any step
        with get_client(sync_client=True) as prefect:
            deployment = prefect.read_deployment_by_name(deployment_name(app.name))
            flow_run = prefect.create_flow_run_from_deployment(
                deployment.id, tags=["deploy-runs", f"app:{app.name}"])
        refused = client.wait(flow_run.id, timeout=60)
    assert refused.status is RunStatus.STOPPED
    assert f"Refused: run {first.id}" in refused.message
    assert all(s.started_at is None for s in refused.steps)

    assert client.wait(first.id, timeout=180).status is RunStatus.COMPLETED
    # once the active run has ended, the app deploys again
    assert client.wait(client.deploy(app.name).id, timeout=120).status is RunStatus.COMPLETED
