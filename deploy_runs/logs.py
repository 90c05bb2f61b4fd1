"""Reading a run's logs back from Prefect as `LogLine` records: attributed to their step, stream
and command, long lines joined back, in the order they were printed, each once.

`LogAssembler` is the pure part (Prefect log records in, `LogLine`s out); `alogs` (async) and
`logs_sync` only fetch pages, and when following end once the run has finished (the caller's
`run_ended`, by `run_record.reader.finished`). Pages are read by time cursor, not
offset, and records already seen are recognised, so a follower that starts late gets the
earlier lines first, then the live ones, with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTimestamp,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import Log
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import PrefectHTTPStatusError
from pydantic import BaseModel

from deploy_runs.steplog import COMMAND_LOGGER, PART_SUFFIX, STREAM_LOGGERS

PAGE_SIZES = (1000, 200)  # a server's limit may be lower than ours: fall back to Prefect's default
FOLLOW_POLL = 0.05
RUN_CHECK = 0.5  # seconds between checks whether a followed run has ended
# Prefect logs "Finished in state ..." after the run's final state: a follower reads on this
# long after the run has finished (runs.finished: the one rule), until a poll brings nothing
TRAIL_SECONDS = 1.0
# A follower whose API stops answering (its server restarting) asks again every FOLLOW_RETRY
# seconds, for FOLLOW_OUTAGE seconds in all, and resumes where it was.
FOLLOW_RETRY = 1.0
FOLLOW_OUTAGE = 300.0
_STREAM_BY_LOGGER = {COMMAND_LOGGER: "command", **{v: k for k, v in STREAM_LOGGERS.items()}}


class LogLine(BaseModel):
    time: datetime
    step: str | None = None
    stream: str = "log"
    level: str = "INFO"
    text: str
    command: str | None = None


class LogAssembler:
    """Turns pages of Prefect log records (oldest first) into `LogLine`s, once each."""

    def __init__(self, step_names: dict[UUID, str], step: str | None = None) -> None:
        self.step_names = step_names
        self.step = step
        self.cursor: datetime | None = None
        # A record is known by its time, task run, logger and text, not its id: under load
        # Prefect's log shipping may retry a batch and store the same record twice. Only
        # records at the cursor's time can come back (the filter is "at or after"), so only
        # theirs need remembering: memory stays flat however long the log is.
        self.seen: dict[tuple, datetime] = {}
        self._parts: dict[tuple[UUID | None, str], list[str]] = {}
        self._commands: dict[UUID | None, str] = {}
        self.delivered = 0

    def feed(self, records: list[Log]) -> list[LogLine]:
        lines = []
        for record in records:
            key = (record.timestamp, record.task_run_id, record.name, record.message)
            if key in self.seen:
                continue
            self.seen[key] = record.timestamp
            if self.cursor is None or record.timestamp > self.cursor:
                self.cursor = record.timestamp
            lines += [line for line in self._lines(record)
                      if self.step is None or line.step == self.step]
            self.delivered += 1
        if self.cursor is not None:
            self.seen = {i: t for i, t in self.seen.items() if t >= self.cursor}
        return lines

    def _lines(self, record: Log) -> list[LogLine]:
        name = record.name or ""
        if name.endswith(PART_SUFFIX):
            self._parts.setdefault((record.task_run_id, name[:-len(PART_SUFFIX)]), []) \
                .append(record.message)
            return []
        stream = _STREAM_BY_LOGGER.get(name, "log")
        parts = self._parts.pop((record.task_run_id, name), None)
        if parts is not None:  # the end of one long line
            texts = ["".join(parts) + record.message]
        elif stream in ("stdout", "stderr"):  # lines that arrived together
            texts = record.message.split("\n")
        else:
            texts = [record.message]
        if stream == "command":
            self._commands[record.task_run_id] = texts[0].removeprefix("$ ")
        step = self.step_names.get(record.task_run_id) if record.task_run_id else None
        command = self._commands.get(record.task_run_id) if stream != "log" else None
        level = logging.getLevelName(record.level)
        return [LogLine(time=record.timestamp, step=step, stream=stream, level=level, text=text,
                        command=command) for text in texts]

    def needs_step_names(self, records: list[Log]) -> bool:
        """Whether a record belongs to a step (task run) not known yet: fetch names first."""
        return any(r.task_run_id and r.task_run_id not in self.step_names for r in records)

    def log_filter(self, run_id: UUID) -> LogFilter:
        """Records at or after the newest one seen (ids already seen are skipped)."""
        return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]),
                         timestamp=LogFilterTimestamp(after_=self.cursor) if self.cursor else None)


def _task_filter(run_id: UUID) -> TaskRunFilter:
    return TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))


def _is_limit_error(exc: PrefectHTTPStatusError) -> bool:
    return exc.response.status_code == 422


class _Pager:
    """Page size negotiation and the "is there more" rule, shared by both faces."""

    def __init__(self) -> None:
        self.sizes = list(PAGE_SIZES)

    @property
    def size(self) -> int:
        return self.sizes[0]

    def smaller(self, exc: PrefectHTTPStatusError) -> None:
        if not (_is_limit_error(exc) and len(self.sizes) > 1):
            raise exc
        self.sizes.pop(0)

    def more(self, page: list[Log], new: int) -> bool:
        # A full page may have more after it; one that brought nothing new cannot advance.
        return len(page) >= self.size and new > 0


class _Follow:
    """When a follower may stop: the run has finished (`runs.finished`, told by the caller's
    `run_ended`) and the last records have arrived."""

    def __init__(self, follow: bool) -> None:
        self.follow = follow
        self.ended_at: float | None = None
        self._checked = 0.0
        self._ended = False
        self._away_since: float | None = None

    def check_run(self) -> bool:
        """Whether to ask the API if the run has ended (every RUN_CHECK s: a poll of the logs
        alone is one request)."""
        now = time.monotonic()
        if now - self._checked < RUN_CHECK:
            return False
        self._checked = now
        return True

    def api_away(self, exc: BaseException) -> float:
        """The API did not answer: the seconds to wait before asking again while following
        (FOLLOW_OUTAGE seconds in all), else raise `exc` (not following, or for too long)."""
        now = time.monotonic()
        self._away_since = self._away_since or now
        if not self.follow or now - self._away_since > FOLLOW_OUTAGE:
            raise exc
        return FOLLOW_RETRY

    def api_back(self) -> None:
        self._away_since = None

    def done(self, ended: bool, got_new: bool) -> bool:
        if not self.follow:
            return True
        self._ended = self._ended or ended
        if not self._ended:
            return False
        now = time.monotonic()
        if self.ended_at is None:
            self.ended_at = now
        # Records still in the flow process's send queue arrive shortly after the run ends.
        return not got_new and now - self.ended_at >= TRAIL_SECONDS


# Async ---------------------------------------------------------------------------------------

async def _step_names(client: PrefectClient, run_id: UUID) -> dict[UUID, str]:
    return {t.id: t.name for t in await client.read_task_runs(task_run_filter=_task_filter(run_id))}


async def alogs(client: PrefectClient, run_id: UUID, step: str | None = None,
                follow: bool = False,
                run_ended: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[LogLine]:
    """A run's log lines, oldest first; with `follow`, keep yielding until the run has ended."""
    assembler = LogAssembler(await _step_names(client, run_id), step)
    pager, until = _Pager(), _Follow(follow)
    while True:
        try:
            ended = await run_ended() if follow and run_ended and until.check_run() else \
                not follow
        except httpx.TransportError as exc:
            await asyncio.sleep(until.api_away(exc))
            continue
        got_new = False
        while True:
            try:
                page = await client.read_logs(log_filter=assembler.log_filter(run_id),
                                              limit=pager.size, sort=LogSort.TIMESTAMP_ASC)
                if assembler.needs_step_names(page):
                    assembler.step_names = await _step_names(client, run_id)
            except PrefectHTTPStatusError as exc:
                pager.smaller(exc)
                continue
            except httpx.TransportError as exc:  # following: resume where it was
                await asyncio.sleep(until.api_away(exc))
                continue
            until.api_back()
            before = assembler.delivered
            for line in assembler.feed(page):
                yield line
            new = assembler.delivered - before
            got_new = got_new or new > 0
            if not pager.more(page, new):
                break
        if until.done(ended, got_new):
            return
        await asyncio.sleep(FOLLOW_POLL)


# Sync ----------------------------------------------------------------------------------------

def logs_sync(client: SyncPrefectClient, run_id: UUID, step: str | None = None,
              follow: bool = False, run_ended: Callable[[], bool] | None = None) -> Iterator[LogLine]:
    """The same as `alogs`, blocking."""

    def names() -> dict[UUID, str]:
        return {t.id: t.name for t in client.read_task_runs(task_run_filter=_task_filter(run_id))}

    assembler = LogAssembler(names(), step)
    pager, until = _Pager(), _Follow(follow)
    while True:
        try:
            ended = run_ended() if follow and run_ended and until.check_run() else not follow
        except httpx.TransportError as exc:
            time.sleep(until.api_away(exc))
            continue
        got_new = False
        while True:
            try:
                page = client.read_logs(log_filter=assembler.log_filter(run_id),
                                        limit=pager.size, sort=LogSort.TIMESTAMP_ASC)
                if assembler.needs_step_names(page):
                    assembler.step_names = names()
            except PrefectHTTPStatusError as exc:
                pager.smaller(exc)
                continue
            except httpx.TransportError as exc:  # following: resume where it was
                time.sleep(until.api_away(exc))
                continue
            until.api_back()
            before = assembler.delivered
            yield from assembler.feed(page)
            new = assembler.delivered - before
            got_new = got_new or new > 0
            if not pager.more(page, new):
                break
        if until.done(ended, got_new):
            return
        time.sleep(FOLLOW_POLL)
