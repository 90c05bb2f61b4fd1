"""Reading a run's logs back from Prefect as `LogLine` records, attributed to steps and streams."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import Log
from prefect.client.schemas.sorting import LogSort
from pydantic import BaseModel

from deploy_runs.steplog import COMMAND_LOGGER, STREAM_LOGGERS

PAGE = 200
_STREAM_BY_LOGGER = {COMMAND_LOGGER: "command", **{v: k for k, v in STREAM_LOGGERS.items()}}


class LogLine(BaseModel):
    time: datetime
    step: str | None = None
    stream: str = "log"
    level: str = "INFO"
    text: str


def _level(number: int) -> str:
    import logging

    return logging.getLevelName(number)


def to_log_line(log: Log, step_names: dict[UUID, str]) -> LogLine:
    return LogLine(
        time=log.timestamp,
        step=step_names.get(log.task_run_id) if log.task_run_id else None,
        stream=_STREAM_BY_LOGGER.get(log.name, "log"),
        level=_level(log.level),
        text=log.message,
    )


async def step_names(client: PrefectClient, run_id: UUID) -> dict[UUID, str]:
    task_runs = await client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id])))
    return {t.id: t.name for t in task_runs}


async def read_logs(client: PrefectClient, run_id: UUID, step: str | None = None) -> list[LogLine]:
    """Every log line of a run (or of one step), oldest first."""
    names = await step_names(client, run_id)
    lines: list[LogLine] = []
    offset = 0
    while True:
        page = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
            limit=PAGE, offset=offset, sort=LogSort.TIMESTAMP_ASC,
        )
        lines += [to_log_line(log, names) for log in page]
        if len(page) < PAGE:
            break
        offset += len(page)
    return [line for line in lines if step is None or line.step == step]
