"""Seed a Prefect store with realistic deploy-run history (flow runs of `deploy-app` with
their step task runs, states, durations, failures and log lines), fast.

Prefect's HTTP API cannot backdate a state (a state's timestamp is the server's "now"), and
the server's orchestration path writes about 4 runs a second here; so rows are written in bulk
with Prefect's own server ORM models (`prefect.server.database`), the same tables and columns
the server itself fills, against the database `PREFECT_API_DATABASE_CONNECTION_URL` names.
Used by `bench/history.py` (10,000 runs) and `tests/integration/test_history.py` (a few dozen).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from deploy_runs.diagnosis import diagnose, signature
from deploy_runs.models import Failure
from deploy_runs.run_record.facts import (
    FAILURE_KEY,
    FAILURE_LEVEL,
    FAILURE_LOGGER,
    RUN_TAG,
    app_tag,
    fact_label,
    failure_index_line,
    trigger_tag,
)
from deploy_runs.steps import PLANNED_STEPS

FAILURES = [  # (step, message, output line) as real runs print them
    ("Start application", "command exited with code 125: $ docker run --detach --name {app}-web",
     "docker: Error response from daemon: driver failed programming external connectivity on "
     "endpoint {app}-web ({id}): Bind for 0.0.0.0:{port} failed: port is already allocated"),
    ("Build images", "command exited with code {code}: $ docker build --tag deploy-runs/{app}-api",
     "The command '/bin/sh -c npm ci' returned a non-zero code: {code}"),
    ("Health check", "service web did not become healthy within 30s (last probe: "
     "http://127.0.0.1:{port}/health: HTTP/1.1 500 Internal Server Error); container {app}-web "
     "is running", "GET /health 500"),
    ("Fetch source", "git ref 'release-{code}' was not found in git://git.example/{app}.git "
     "(no such branch, tag or commit)", ""),
]


@dataclass
class SeedRun:
    app: str
    start: datetime
    steps: list[tuple[str, str, float]]  # (step, COMPLETED|FAILED|SKIPPED, seconds)
    failure: Failure | None = None
    commit: str = field(default_factory=lambda: uuid.uuid4().hex + "00000000")
    logs: int = 2  # log records per step that ran

    @property
    def state(self) -> str:
        return "FAILED" if self.failure else "COMPLETED"

    @property
    def duration(self) -> float:
        return round(sum(seconds for _, _, seconds in self.steps), 3)


def make_run(app: str, start: datetime, durations: Iterable[float],
             failed_step: str | None = None, message: str = "", output: str = "",
             logs: int = 2) -> SeedRun:
    """A run whose steps took `durations` (one per planned step, in order); with
    `failed_step`, that step fails and the later ones are Skipped."""
    steps = []
    failure = None
    ended = False
    for step, seconds in zip(PLANNED_STEPS, durations, strict=True):
        if ended:
            steps.append((step, "SKIPPED", 0.0))
        elif step == failed_step:
            steps.append((step, "FAILED", seconds))
            failure = Failure(step=step, message=message, output_tail=[output] if output else [])
            failure.suggestions = diagnose(failure.text(), step)
            failure.signature = signature(failure)
            ended = True
        else:
            steps.append((step, "COMPLETED", seconds))
    return SeedRun(app=app, start=start, steps=steps, failure=failure, logs=logs)


def realistic(runs: int, apps: int, now: datetime, days: int = 90,
              seed: int = 7) -> list[SeedRun]:
    """`runs` runs of `apps` apps over `days` days: app 0 gets a fifth of them (the busy one);
    about 12% fail, in one of a few recurring ways with volatile details."""
    rng = random.Random(seed)
    names = [f"app-{i:02d}" for i in range(apps)]
    weights = [max(1, runs // 5)] + [1] * (apps - 1)
    counts = [runs // 5] + [0] * (apps - 1)
    for _ in range(runs - counts[0]):
        counts[1 + rng.randrange(apps - 1)] += 1
    del weights
    planned = []
    for name, count in zip(names, counts, strict=True):
        for _ in range(count):
            start = now - timedelta(seconds=rng.uniform(60, days * 86400))
            durations = [rng.uniform(0.2, 1.5), rng.uniform(0.5, 3), rng.uniform(2, 60),
                         rng.uniform(1, 8), rng.uniform(0.5, 10)]
            if rng.random() < 0.12:
                step, message, output = rng.choice(FAILURES)
                values = {"app": name, "port": rng.randrange(8000, 9000),
                          "code": rng.randrange(1, 3), "id": uuid.uuid4().hex}
                planned.append(make_run(name, start, durations, step, message.format(**values),
                                        output.format(**values)))
            else:
                planned.append(make_run(name, start, durations))
    return sorted(planned, key=lambda r: r.start)


async def write(runs: list[SeedRun], batch: int = 500) -> None:
    """Write the runs into the Prefect database of the current settings."""
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    async with db.session_context(begin_transaction=True) as session:
        flow_id = (await session.execute(sa.select(db.Flow.id).where(
            db.Flow.name == "deploy-app"))).scalar()
        if flow_id is None:
            flow_id = uuid.uuid4()
            await session.execute(sa.insert(db.Flow), [{"id": flow_id, "name": "deploy-app"}])
    for offset in range(0, len(runs), batch):
        async with db.session_context(begin_transaction=True) as session:
            await _write_batch(db, session, flow_id, runs[offset:offset + batch])


def _state(state_id, owner: str, owner_id, type_: str, name: str, at: datetime,
           message: str | None = None) -> dict:
    return {"id": state_id, owner: owner_id, "type": type_, "name": name, "timestamp": at,
            "message": message, "state_details": {}}


async def _write_batch(db, session, flow_id, runs: list[SeedRun]) -> None:
    flow_runs, flow_states, task_runs, task_states, logs, inputs = [], [], [], [], [], []
    for run in runs:
        run_id, final_id = uuid.uuid4(), uuid.uuid4()
        end = run.start + timedelta(seconds=run.duration)
        state_name = "Failed" if run.failure else "Completed"
        message = (f"{run.failure.step} failed: {run.failure.message}" if run.failure
                   else f"Deployed {run.app} at {run.commit}")
        labels = {fact_label("app"): run.app, fact_label("ref"): "",
                  fact_label("commit"): run.commit, fact_label("commit-message"): "seeded",
                  fact_label("config"): json.dumps({"web": {"ports": "80:8080", "env": {},
                                                            "secrets": [], "health": {}}})}
        if run.failure:
            labels[fact_label("failure")] = run.failure.signature or ""
            inputs.append({"id": uuid.uuid4(), "flow_run_id": run_id, "key": FAILURE_KEY,
                           "value": run.failure.model_dump_json()})
            logs.append({"id": uuid.uuid4(), "name": FAILURE_LOGGER, "level": FAILURE_LEVEL,
                         "flow_run_id": run_id, "task_run_id": None, "timestamp": end,
                         "message": failure_index_line(run.app, run.failure)})
        flow_runs.append({
            "id": run_id, "flow_id": flow_id, "name": f"{run.app}-{run.commit[:7]}",
            "state_type": run.state, "state_name": state_name, "state_timestamp": end,
            "run_count": 1, "expected_start_time": run.start, "start_time": run.start,
            "end_time": end, "total_run_time": timedelta(seconds=run.duration),
            "parameters": {"app": run.app}, "tags": [RUN_TAG, app_tag(run.app),
                                                      trigger_tag("deploy")],
            "labels": labels, "empirical_policy": {}, "context": {}, "created": run.start,
            "updated": end})
        flow_states += [_state(uuid.uuid4(), "flow_run_id", run_id, "RUNNING", "Running",
                               run.start),
                        _state(final_id, "flow_run_id", run_id, run.state, state_name, end,
                               message)]
        at = run.start
        for step, status, seconds in run.steps:
            task_id, task_state = uuid.uuid4(), uuid.uuid4()
            ran = status != "SKIPPED"
            begin, finish = at, at + timedelta(seconds=seconds)
            kind, name = {"COMPLETED": ("COMPLETED", "Completed"), "FAILED": ("FAILED", "Failed"),
                          "SKIPPED": ("COMPLETED", "Skipped")}[status]
            if not ran:
                continue  # steps that never started have no task run
            task_runs.append({
                "id": task_id, "flow_run_id": run_id, "name": step, "task_key": step,
                "dynamic_key": "0", "state_type": kind, "state_name": name,
                "state_timestamp": finish, "run_count": 1, "expected_start_time": begin,
                "start_time": begin, "end_time": finish,
                "total_run_time": timedelta(seconds=seconds), "empirical_policy": {},
                "task_inputs": {}, "tags": [], "created": begin, "updated": finish})
            task_states.append(_state(task_state, "task_run_id", task_id, kind, name, finish,
                                      run.failure.message if status == "FAILED" and run.failure
                                      else None))
            for i in range(run.logs):
                text = (f"$ docker build --tag deploy-runs/{run.app}-web ." if i == 0 else
                        run.failure.output_tail[0] if status == "FAILED" and run.failure
                        and run.failure.output_tail else f"{step}: step output line {i}")
                logs.append({"id": uuid.uuid4(), "name": "prefect.task_runs.command" if i == 0
                             else "prefect.task_runs.stdout", "level": 20,
                             "flow_run_id": run_id, "task_run_id": task_id, "message": text,
                             "timestamp": begin + timedelta(seconds=seconds * (i + 1)
                                                            / (run.logs + 1))})
            at = finish
            task_runs[-1]["state_id"] = task_state
        flow_runs[-1]["state_id"] = final_id
    # runs and their states point at each other: check the keys at commit (SQLite)
    if session.bind.dialect.name == "sqlite":
        await session.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
    await session.execute(sa.insert(db.FlowRun), flow_runs)
    await session.execute(sa.insert(db.FlowRunState), flow_states)
    if task_runs:
        await session.execute(sa.insert(db.TaskRun), task_runs)
        await session.execute(sa.insert(db.TaskRunState), task_states)
    if logs:
        await session.execute(sa.insert(db.Log), logs)
    if inputs:
        await session.execute(sa.insert(db.FlowRunInput), inputs)


def now() -> datetime:
    return datetime.now(UTC)
