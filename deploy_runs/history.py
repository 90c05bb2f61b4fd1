"""Run history: listing with filters, comparing two runs, statistics, recurring failures and
log search. The server filters, sorts and pages (tags, state types, time windows; light rows
of the UI's run-history endpoint, `prefect_compat.ui_history`, for statistics); the client
only does what Prefect cannot (medians, grouping by failure signature, line-level matching).

The pure parts (`stats_from_rows`, `config_diff`, `first_divergence`, `group_failures`) are
unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterLevel,
    LogFilterTextSearch,
    LogFilterTimestamp,
    TaskRunFilter,
    TaskRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort, LogSort, TaskRunSort

from deploy_runs.diagnosis import normalise
from deploy_runs.logs import LogAssembler
from deploy_runs.models import (
    ConfigDiff,
    DayCount,
    LogDivergence,
    LogMatch,
    RecurringFailure,
    Run,
    RunComparison,
    RunStats,
    StepComparison,
    Trend,
)
from deploy_runs.prefect_compat.ui_history import flow_run_history
from deploy_runs.run_record.facts import (
    FAILURE_LEVEL,
    FAILURE_LOGGER,
    RUN_TAG,
    app_tag,
    fact_label,
    parse_failure_index_line,
)
from deploy_runs.status import RunStatus, StepStatus
from deploy_runs.steps import PLANNED_STEPS

PAGE = 1000  # the server's page limit (Prefect's default API limit is 200: fall back to it)

STATE_TYPES: dict[RunStatus, list[StateType]] = {
    RunStatus.STARTED: [StateType.SCHEDULED, StateType.PENDING],
    RunStatus.IN_PROGRESS: [StateType.RUNNING],
    RunStatus.PAUSED: [StateType.PAUSED],
    RunStatus.COMPLETED: [StateType.COMPLETED],
    RunStatus.FAILED: [StateType.FAILED, StateType.CRASHED],
    RunStatus.STOPPED: [StateType.CANCELLING, StateType.CANCELLED],
}
FAILED_TYPES = {StateType.FAILED, StateType.CRASHED}
STOPPED_TYPES = {StateType.CANCELLING, StateType.CANCELLED}


def run_filter(app: str | None = None, statuses: Sequence[RunStatus] = (),
               since: datetime | None = None, until: datetime | None = None,
               ids: Sequence[UUID] | None = None) -> FlowRunFilter:
    types = [t for status in statuses for t in STATE_TYPES[status]]
    return FlowRunFilter(
        tags=FlowRunFilterTags(all_=[RUN_TAG] + ([app_tag(app)] if app else [])),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)) if types else None,
        expected_start_time=FlowRunFilterExpectedStartTime(after_=since, before_=until)
        if since or until else None,
        id=FlowRunFilterId(any_=list(ids)) if ids is not None else None,
    )


async def _pages(fetch, limit: int | None = None, offset: int = 0) -> list:
    """Every row of a paged server query (offset paging), up to `limit` rows after `offset`.
    `fetch(limit, offset)` reads one page."""
    rows: list = []
    page = PAGE
    while limit is None or len(rows) < limit:
        want = page if limit is None else min(page, limit - len(rows))
        try:
            got = await fetch(want, offset + len(rows))
        except Exception as exc:  # a server whose page limit is lower than ours
            if page == PAGE and "422" in str(exc) and "limit" in str(exc):
                page = 200
                continue
            raise
        rows += got
        if len(got) < want:
            break
    return rows


# --- statistics ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One run as statistics need it (the UI history endpoint's row)."""

    id: UUID
    state: StateType
    start: datetime
    duration: float  # seconds of run time

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration)


async def history_rows(client: PrefectClient, flow_runs: FlowRunFilter) -> list[Row]:
    """Light rows (id, state, start, run time) of every matching run, oldest first."""

    async def fetch(limit: int, offset: int) -> list[Row]:
        rows = await flow_run_history(client, flow_runs, limit, offset)
        return [Row(UUID(r["id"]), StateType(r["state_type"]),
                    datetime.fromisoformat(r["timestamp"]), _seconds(r["duration"]))
                for r in rows]

    return await _pages(fetch)


def _seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"P(?:(\d+)D)?T?(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?", str(value))
    if not match:
        return 0.0
    d, h, m, s = (float(x) if x else 0.0 for x in match.groups())
    return d * 86400 + h * 3600 + m * 60 + s


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = q * (len(ordered) - 1)
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (index - low), 3)


def stats_from_rows(app: str, days: int, now: datetime, rows: list[Row],
                    step_durations: dict[str, list[float]], step_runs: int) -> RunStats:
    """Statistics of the window [now - days, now) from `rows` (oldest first), which may also
    hold the previous window (for the trend)."""
    since = now - timedelta(days=days)
    current = [r for r in rows if since <= r.start < now]
    previous = [r for r in rows if since - timedelta(days=days) <= r.start < since]

    def summary(window: list[Row]) -> dict[str, float | None]:
        done = [r for r in window if r.state is StateType.COMPLETED]
        failed = [r for r in window if r.state in FAILED_TYPES]
        finished = len(done) + len(failed)
        return {"deploys": float(len(window)),
                "success_rate": round(len(done) / finished, 4) if finished else None,
                "median_duration": _quantile([r.duration for r in done], 0.5),
                "p90_duration": _quantile([r.duration for r in done], 0.9)}

    now_summary, before = summary(current), summary(previous)
    per_day: dict[str, list[int]] = {}
    per_week: dict[str, list[int]] = {}
    day = since.date()
    while day <= (now - timedelta(microseconds=1)).date():
        per_day[day.isoformat()] = [0, 0]
        day += timedelta(days=1)
    for r in current:
        iso = r.start.isocalendar()
        for table, key in ((per_day, r.start.date().isoformat()),
                           (per_week, f"{iso.year}-W{iso.week:02d}")):
            counts = table.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += r.state in FAILED_TYPES
    recoveries = []
    failed_at: datetime | None = None
    for r in current:  # oldest first: a failure streak ends at the next completed run
        if r.state in FAILED_TYPES and failed_at is None:
            failed_at = r.end
        elif r.state is StateType.COMPLETED and failed_at is not None:
            recoveries.append((r.end - failed_at).total_seconds())
            failed_at = None
    trend = {name: Trend(current=now_summary[name], previous=before[name],
                         change=round(now_summary[name] - before[name], 4)
                         if now_summary[name] is not None and before[name] is not None else None)
             for name in now_summary}
    return RunStats(
        app=app, days=days, since=since, runs=len(current),
        completed=sum(r.state is StateType.COMPLETED for r in current),
        failed=sum(r.state in FAILED_TYPES for r in current),
        stopped=sum(r.state in STOPPED_TYPES for r in current),
        success_rate=now_summary["success_rate"],
        per_day=[DayCount(period=k, deploys=v[0], failed=v[1]) for k, v in per_day.items()],
        per_week=[DayCount(period=k, deploys=v[0], failed=v[1])
                  for k, v in sorted(per_week.items())],
        median_duration=now_summary["median_duration"], p90_duration=now_summary["p90_duration"],
        step_medians={step: _quantile(values, 0.5) or 0.0
                      for step in PLANNED_STEPS if (values := step_durations.get(step))},
        step_sample_runs=step_runs,
        time_to_recover=_quantile(recoveries, 0.5), recoveries=len(recoveries),
        durations=[r.duration for r in current if r.state is StateType.COMPLETED],
        trend=trend,
    )


STEP_SAMPLE_TASK_RUNS = 150  # per-step medians over the newest ~30 completed runs


async def stats(client: PrefectClient, app: str, days: int = 30,
                now: datetime | None = None) -> RunStats:
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    completed = run_filter(app, [RunStatus.COMPLETED], since=since, until=now)
    # one after the other: with SQLite, concurrent requests only queue behind each other
    rows = await history_rows(client, run_filter(app, since=since - timedelta(days=days),
                                                 until=now))
    task_runs = await _pages(lambda limit, offset: client.read_task_runs(
        flow_run_filter=completed, sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=limit,
        offset=offset), limit=STEP_SAMPLE_TASK_RUNS)
    durations: dict[str, list[float]] = defaultdict(list)
    for t in task_runs:
        if t.name in PLANNED_STEPS and t.state and t.state.is_completed() \
                and t.state.name != "Skipped" and t.total_run_time is not None:
            durations[t.name].append(t.total_run_time.total_seconds())
    return stats_from_rows(app, days, now, rows, durations,
                           len({t.flow_run_id for t in task_runs}))


# --- recurring failures --------------------------------------------------------------------

@dataclass(frozen=True)
class FailureEntry:
    run_id: UUID
    signature: str
    app: str
    when: datetime | None
    example: str


def crashed_entry(flow_run: FlowRun) -> FailureEntry:
    """A run that ended without the flow recording its failure (its process died)."""
    labels = flow_run.labels or {}
    recorded = labels.get(fact_label("failure"))
    message = (flow_run.state.message if flow_run.state else "") or ""
    kind = "crashed" if flow_run.state and flow_run.state.type is StateType.CRASHED else "unknown"
    signature = str(recorded) if recorded else \
        f"{kind}|-|{normalise(message.splitlines()[0] if message else '')[:200]}"
    return FailureEntry(flow_run.id, signature, str(labels.get(fact_label("app")) or ""),
                        flow_run.start_time or flow_run.expected_start_time, message)


def group_failures(entries: list[FailureEntry]) -> list[RecurringFailure]:
    """Failures (most recent first) grouped by signature, biggest group first."""
    groups: dict[str, list[FailureEntry]] = defaultdict(list)
    for entry in entries:
        groups[entry.signature].append(entry)
    found = []
    for signature, members in groups.items():
        kind, step, message = [*signature.split("|", 2), "", ""][:3]
        known = [m.when for m in members if m.when is not None]
        found.append(RecurringFailure(
            signature=signature, kind=kind, step=step, message=message,
            example=members[0].example[:500], count=len(members),
            apps=sorted({m.app for m in members} - {""}),
            first_seen=min(known) if known else None, last_seen=max(known) if known else None,
            run_ids=[m.run_id for m in members[:5]]))
    return sorted(found, key=lambda f: (-f.count, f.signature))


async def recurring_failures(client: PrefectClient, app: str | None = None,
                             days: int = 90) -> list[RecurringFailure]:
    """Reads the failure index (one log record per failed run, logger `FAILURE_LOGGER`), plus
    runs that crashed before they could write it."""
    since = datetime.now(UTC) - timedelta(days=days)
    index = LogFilter(level=LogFilterLevel(ge_=FAILURE_LEVEL, le_=FAILURE_LEVEL),
                      timestamp=LogFilterTimestamp(after_=since))
    records = await _pages(lambda limit, offset: client.read_logs(
        log_filter=index, sort=LogSort.TIMESTAMP_DESC, limit=limit, offset=offset))
    entries = []
    for record in records:
        value = parse_failure_index_line(record.message) if record.name == FAILURE_LOGGER \
            else None
        if value and record.flow_run_id and (app is None or value.get("app") == app):
            entries.append(FailureEntry(record.flow_run_id, value["signature"],
                                        str(value.get("app") or ""), record.timestamp,
                                        str(value.get("message") or "")))
    crashed = run_filter(app, since=since)
    crashed.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))
    entries += [crashed_entry(f) for f in await _pages(lambda limit, offset: client.read_flow_runs(
        flow_run_filter=crashed, limit=limit, offset=offset,
        sort=FlowRunSort.EXPECTED_START_TIME_DESC))]
    entries.sort(key=lambda e: e.when or since, reverse=True)
    return group_failures(entries)


# --- log search ----------------------------------------------------------------------------

async def search_logs(client: PrefectClient, pattern: str, app: str | None = None,
                      days: int = 90, limit: int = 200) -> list[LogMatch]:
    """Log lines containing `pattern` (case-insensitive) in deploy runs of the last `days`
    (of `app`), most recent first. The server's text search narrows the records; lines are
    then matched exactly and attributed to their run and step."""
    since = datetime.now(UTC) - timedelta(days=days)
    needle = pattern.lower()
    query = pattern if re.fullmatch(r"[\w.:/@-]+", pattern) else f'"{pattern}"'
    found = LogFilter(text=LogFilterTextSearch(query=query),
                      timestamp=LogFilterTimestamp(after_=since))
    matches: list[LogMatch] = []
    runs: dict[UUID, FlowRun | None] = {}
    names: dict[UUID, str] = {}
    offset = 0
    while len(matches) < limit:
        records = await client.read_logs(log_filter=found, sort=LogSort.TIMESTAMP_DESC,
                                         limit=200, offset=offset)
        offset += len(records)
        unknown = list({r.flow_run_id for r in records if r.flow_run_id} - set(runs))
        if unknown:
            for flow_run in await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=unknown)),
                    limit=len(unknown)):
                runs[flow_run.id] = flow_run
            runs.update({i: None for i in unknown if i not in runs})
        tasks = list({r.task_run_id for r in records if r.task_run_id} - set(names))
        if tasks:
            names.update({t.id: t.name for t in await client.read_task_runs(
                task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=tasks)),
                limit=len(tasks))})
        for record in records:
            flow_run = runs.get(record.flow_run_id) if record.flow_run_id else None
            labels = (flow_run.labels or {}) if flow_run else {}
            run_app = str(labels.get(fact_label("app")) or "") or None
            if flow_run is None or RUN_TAG not in (flow_run.tags or []) or \
                    (app is not None and run_app != app) or record.name == FAILURE_LOGGER:
                continue
            for line in LogAssembler(names).feed([record]):
                if needle in line.text.lower():
                    matches.append(LogMatch(
                        run_id=flow_run.id, run_name=flow_run.name, app=run_app,
                        step=line.step, time=line.time, stream=line.stream, line=line.text))
        if len(records) < 200:
            break
    return matches[:limit]


# --- comparing two runs --------------------------------------------------------------------

def config_of(flow_run: FlowRun) -> dict | None:
    value = (flow_run.labels or {}).get(fact_label("config"))
    return json.loads(str(value)) if value else None


def config_diff(a: dict, b: dict) -> ConfigDiff:
    diff = ConfigDiff(services_added=sorted(set(b) - set(a)),
                      services_removed=sorted(set(a) - set(b)))
    for name in sorted(set(a) & set(b)):
        sa, sb = a[name], b[name]
        ea, eb = sa.get("env", {}), sb.get("env", {})
        diff.env_added += [f"{name}.{k}" for k in sorted(set(eb) - set(ea))]
        diff.env_removed += [f"{name}.{k}" for k in sorted(set(ea) - set(eb))]
        diff.env_changed += [f"{name}.{k}" for k in sorted(set(ea) & set(eb)) if ea[k] != eb[k]]
        xa, xb = set(sa.get("secrets", [])), set(sb.get("secrets", []))
        diff.secrets_added += [f"{name}.{k}" for k in sorted(xb - xa)]
        diff.secrets_removed += [f"{name}.{k}" for k in sorted(xa - xb)]
        if sa.get("ports") != sb.get("ports"):
            diff.ports.append(f"{name}: {sa.get('ports')} -> {sb.get('ports')}")
        ha, hb = sa.get("health", {}), sb.get("health", {})
        diff.health_checks += [f"{name}.{k}: {ha.get(k)} -> {hb.get(k)}"
                               for k in sorted(set(ha) | set(hb)) if ha.get(k) != hb.get(k)]
        for key in ("build", "memory"):
            if sa.get(key) != sb.get(key):
                diff.other.append(f"{name}: {key} changed")
    return diff


def first_divergence(step: str, a: list[str], b: list[str], context: int = 2) -> LogDivergence | None:
    """The first line where two outputs differ once volatile parts (ids, times, numbers) are
    normalised; a few lines of context from each side."""
    for i in range(max(len(a), len(b))):
        la = normalise(a[i]) if i < len(a) else None
        lb = normalise(b[i]) if i < len(b) else None
        if la != lb:
            lo = max(0, i - context)
            return LogDivergence(step=step, line=i + 1, a=a[lo:i + context + 1],
                                 b=b[lo:i + context + 1])
    return None


def commits_between(repo: str | Path, a: str, b: str, limit: int = 50) -> list[str] | None:
    """'SHA subject' of the commits after `a` up to `b` in a local clone (None if unknown)."""
    done = subprocess.run(["git", "-C", str(repo), "log", f"--max-count={limit}",
                           "--format=%h %s", "--end-of-options", f"{a}..{b}"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines() if done.returncode == 0 else None


def compare_runs(a: Run, b: Run, config_a: dict | None, config_b: dict | None,
                 logs_a: list[str] | None, logs_b: list[str] | None,
                 commits: list[str] | None) -> RunComparison:
    steps = []
    for sa, sb in zip(a.steps, b.steps, strict=True):
        delta = round(sb.duration - sa.duration, 3) \
            if sa.duration is not None and sb.duration is not None else None
        steps.append(StepComparison(name=sa.name, status_a=sa.status, status_b=sb.status,
                                    duration_a=sa.duration, duration_b=sb.duration, delta=delta))
    failing = divergence_step(a, b)
    return RunComparison(
        run_a=a, run_b=b, steps=steps,
        duration_delta=round(b.duration - a.duration, 3)
        if a.duration is not None and b.duration is not None else None,
        commits_between=commits,
        rebuilt_a=[s.name for s in a.services if s.build == "rebuilt"],
        rebuilt_b=[s.name for s in b.services if s.build == "rebuilt"],
        config=config_diff(config_a, config_b) if config_a is not None and config_b is not None
        else None,
        error_a=a.error, error_b=b.error,
        divergence=first_divergence(failing, logs_a or [], logs_b or [])
        if failing and logs_a is not None and logs_b is not None else None,
    )


def divergence_step(a: Run, b: Run) -> str | None:
    """The step whose output is compared: the one that failed in either run."""
    for run in (a, b):
        for step in run.steps:
            if step.status is StepStatus.FAILED:
                return step.name
    return None


async def step_output(client: PrefectClient, run_id: UUID, step: str) -> list[str]:
    from deploy_runs.logs import alogs

    return [line.text async for line in alogs(client, run_id, step, False, None)
            if line.stream in ("command", "stdout", "stderr")]


async def compare(client: PrefectClient, a: Run, b: Run, flow_a: FlowRun, flow_b: FlowRun,
                  repo: str | Path | None = None) -> RunComparison:
    step = divergence_step(a, b)
    logs_a, logs_b = (await asyncio.gather(step_output(client, a.id, step),
                                           step_output(client, b.id, step))) \
        if step else (None, None)
    commits = commits_between(repo, a.commit, b.commit) \
        if repo and a.commit and b.commit else None
    return compare_runs(a, b, config_of(flow_a), config_of(flow_b), logs_a, logs_b, commits)
