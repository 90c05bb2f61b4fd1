"""The one rule and the one wait for a run recorded for good (deploy_runs.run_record.reader): reading a run
that has just ended waits (briefly) for Prefect to record its steps' last states, which trail
the run's own final state; other runs are read once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from deploy_runs.models import Run
from deploy_runs.run_record.reader import SETTLE_SECONDS, finished, read_finished
from deploy_runs.status import RunStatus


def run(status: RunStatus, settled: bool, ended_ago: float | None) -> Run:
    ended = None if ended_ago is None else datetime.now(UTC) - timedelta(seconds=ended_ago)
    return Run(id=uuid4(), name="hello-1", app="hello", status=status, steps=[], ended_at=ended,
               settled=settled)


class Reads:
    def __init__(self, *runs: Run) -> None:
        self.runs = list(runs)
        self.count = 0

    async def __call__(self) -> Run:
        self.count += 1
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]


def test_a_run_that_just_ended_is_read_until_its_steps_are_recorded():
    reads = Reads(run(RunStatus.COMPLETED, False, 0.1), run(RunStatus.COMPLETED, False, 0.2),
                  run(RunStatus.COMPLETED, True, 0.3))
    found = asyncio.run(read_finished(reads, interval=0.01))
    assert found.settled and reads.count == 3


def test_running_settled_and_long_ended_runs_are_read_once():
    for made in (run(RunStatus.IN_PROGRESS, False, None), run(RunStatus.FAILED, True, 0.1),
                 run(RunStatus.FAILED, False, 3600)):  # e.g. a step left Running by a crash
        reads = Reads(made)
        assert asyncio.run(read_finished(reads, interval=0.01)) is made
        assert reads.count == 1


def test_the_wait_is_bounded_when_the_steps_never_arrive():
    reads = Reads(run(RunStatus.COMPLETED, False, -3600))  # server clock ahead of this one
    found = asyncio.run(read_finished(reads, patience=0.2, interval=0.01))
    assert not found.settled and reads.count >= 2


def test_finished_is_the_one_rule():
    now = datetime.now(UTC)
    assert not finished(run(RunStatus.IN_PROGRESS, True, None), now)
    assert not finished(run(RunStatus.PAUSED, True, None), now)
    assert finished(run(RunStatus.COMPLETED, True, 0.1), now)
    assert not finished(run(RunStatus.COMPLETED, False, 0.1), now)
    assert finished(run(RunStatus.STOPPED, False, SETTLE_SECONDS + 1), now)


def test_every_reader_uses_the_one_rule():
    """get_run, wait and both log followers decide by runs.finished / read_finished; nothing
    else in the package keeps a settle wait of its own."""
    import inspect

    from deploy_runs import client

    assert "read_finished" in inspect.getsource(client.AsyncDeployRuns.get_run)
    assert "read_finished" in inspect.getsource(client.AsyncDeployRuns.wait)
    assert "finished(" in inspect.getsource(client.AsyncDeployRuns.logs)
    assert "finished(" in inspect.getsource(client.DeployRuns.logs)
