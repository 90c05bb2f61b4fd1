"""A run read while Prefect records its steps is not taken as settled: a step's task run can be
read before its state is (it would show as Skipped, not as the step it ran)."""

from __future__ import annotations

from uuid import uuid4

from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.states import Completed

from deploy_runs.run_record.reader import run_from_prefect
from deploy_runs.status import StepStatus
from deploy_runs.steps import PLANNED_STEPS


def read(last_state) -> object:
    flow_run = FlowRun(id=uuid4(), name="hello-1", flow_id=uuid4(), parameters={"app": "hello"},
                       state=Completed(message="Deployed hello"))
    task_runs = [TaskRun(id=uuid4(), name=name, flow_run_id=flow_run.id, task_key=name,
                         dynamic_key="0", state=Completed())
                 for name in PLANNED_STEPS[:-1]]
    task_runs.append(TaskRun(id=uuid4(), name=PLANNED_STEPS[-1], flow_run_id=flow_run.id,
                             task_key=PLANNED_STEPS[-1], dynamic_key="0", state=last_state))
    return run_from_prefect(flow_run, task_runs)


def test_a_step_whose_task_run_has_no_state_yet_keeps_the_run_unsettled():
    run = read(None)
    assert run.steps[-1].status is StepStatus.SKIPPED  # what a reader would see meanwhile
    assert not run.settled


def test_once_every_step_has_its_state_the_run_is_settled():
    run = read(Completed())
    assert run.settled
    assert [s.status for s in run.steps] == [StepStatus.COMPLETED] * len(PLANNED_STEPS)
