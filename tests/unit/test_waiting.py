"""Why a run has not started (no worker, a paused pool), and the plain progress lines printed
where there is no terminal (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun, State, StateType

from deploy_runs.models import Run, Step
from deploy_runs.run_record.reader import NO_WORKER_SECONDS, OVERDUE_SECONDS, overdue, waiting_reason
from deploy_runs.run_record.summary import summary_markdown
from deploy_runs.status import RunStatus, StepStatus
from deploy_runs.view import progress_lines

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def flow_run(state: StateType, due_seconds_ago: float, pool: str | None = "deploy-runs"):
    return FlowRun(id=uuid4(), name="r", flow_id=uuid4(), work_pool_name=pool,
                   expected_start_time=NOW - timedelta(seconds=due_seconds_ago),
                   state=State(type=state, name=state.value.title()))


def test_only_a_run_still_scheduled_past_its_time_on_a_pool_is_overdue():
    assert overdue(flow_run(StateType.SCHEDULED, OVERDUE_SECONDS + 1), NOW)
    assert not overdue(flow_run(StateType.SCHEDULED, OVERDUE_SECONDS - 1), NOW)
    assert not overdue(flow_run(StateType.PENDING, 60), NOW)  # a worker took it
    assert not overdue(flow_run(StateType.RUNNING, 60), NOW)
    assert not overdue(flow_run(StateType.SCHEDULED, 60, pool=None), NOW)  # in-process


def test_no_worker_is_said_with_when_one_last_asked_and_how_to_start_one():
    reason = waiting_reason("deploy-runs", NOW - timedelta(minutes=7), NOW)
    assert reason is not None
    assert "No worker serves work pool 'deploy-runs'" in reason
    assert "11:53:00 UTC (7 min ago)" in reason
    assert "deploy-runs worker --pool deploy-runs" in reason
    never = waiting_reason("p", None, NOW)
    assert never is not None and "none has asked it for runs yet" in never


def test_a_worker_that_asked_lately_is_no_reason_and_a_paused_pool_is():
    assert waiting_reason("p", NOW - timedelta(seconds=NO_WORKER_SECONDS - 1), NOW) is None
    assert waiting_reason("p", NOW - timedelta(seconds=NO_WORKER_SECONDS + 1), NOW)
    assert waiting_reason("p", NOW - timedelta(seconds=30), NOW, stale=60) is None
    paused = waiting_reason("p", NOW, NOW, paused=True)
    assert paused is not None and "prefect work-pool resume p" in paused


def a_run(status: RunStatus, steps: dict[str, StepStatus], reason: str | None = None) -> Run:
    return Run(id=uuid4(), name="hello-abc1234", app="hello", status=status,
               steps=[Step(name=n, status=s, duration=1.5 if s is StepStatus.COMPLETED else None)
                      for n, s in steps.items()], waiting_reason=reason)


def test_progress_lines_say_each_change_once_as_it_happens():
    seen: dict[str, object] = {}
    waiting = a_run(RunStatus.STARTED, {"Provision server": StepStatus.PENDING,
                                        "Build images": StepStatus.PENDING}, "No worker serves")
    first = progress_lines(seen, waiting)
    assert first[0].endswith("of hello: Started") and first[1] == "  waiting: No worker serves"
    assert progress_lines(seen, waiting) == []  # nothing changed: nothing printed
    going = a_run(RunStatus.IN_PROGRESS, {"Provision server": StepStatus.COMPLETED,
                                          "Build images": StepStatus.RUNNING})
    assert progress_lines(seen, going)[1:] == ["  Provision server: Completed in 1.5s",
                                               "  Build images: Running"]
    done = a_run(RunStatus.FAILED, {"Provision server": StepStatus.COMPLETED,
                                    "Build images": StepStatus.FAILED})
    assert progress_lines(seen, done)[1:] == ["  Build images: Failed"]


def test_the_summary_and_not_an_ended_run_say_why_it_waits():
    waiting = a_run(RunStatus.STARTED, {"Build images": StepStatus.PENDING}, "No worker serves")
    assert "> ⏳ No worker serves" in summary_markdown(waiting)
    ended = a_run(RunStatus.STOPPED, {"Build images": StepStatus.PENDING}, "No worker serves")
    assert "No worker serves" not in summary_markdown(ended)
