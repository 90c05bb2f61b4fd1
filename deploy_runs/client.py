"""The public Python API: `AsyncDeployRuns` does the work; `DeployRuns` is the same API, blocking.

    from deploy_runs import DeployRuns

    runs = DeployRuns()
    run = runs.deploy("hello")            # returns at once, status Started
    run = runs.wait(run.id, timeout=300)  # until Completed / Failed / Stopped
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled
from prefect.utilities.asyncutils import run_coro_as_sync

from blocks.application import Application, check_ref
from deploy_runs import history
from deploy_runs.concurrency import ACTIVE_SORT, active_filter, busy_message
from deploy_runs.controls import CONTROL_LABEL, PAUSE, STOP, requested
from deploy_runs.errors import (
    APIUnavailable,
    AppBusy,
    AppNotFound,
    ConfigError,
    InvalidControl,
    NoWorker,
    RunNotFound,
    WaitTimeout,
)
from deploy_runs.logs import LogLine, alogs, logs_sync
from deploy_runs.models import Failure, LogMatch, RecurringFailure, Run, RunComparison, RunStats
from deploy_runs.notify import Notification
from deploy_runs.run_record.facts import FAILURE_KEY, RUN_TAG, app_tag, trigger_tag
from deploy_runs.run_record.reader import (
    DEPLOY_FLOW,
    NO_WORKER_SECONDS,
    finished,
    overdue,
    read_finished,
    run_from_prefect,
    waiting_reason,
)
from deploy_runs.status import RunStatus

T = TypeVar("T")


def deployment_name(app: str) -> str:
    return f"{DEPLOY_FLOW}/{app}"


def _run_id(run_id: UUID | str) -> UUID:
    try:
        return run_id if isinstance(run_id, UUID) else UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"no run {run_id!r}: a run id is a UUID") from None


class AsyncDeployRuns:
    """Deploy applications and read their runs (async)."""

    async def deploy(self, app: str, ref: str | None = None,
                     pause_timeout: float | None = None, *, _retry_of: UUID | None = None,
                     _trigger: str = "deploy", _concurrency: str | None = None,
                     _rollback_to: str | None = None) -> Run:
        """Start a run of `app` through its Prefect deployment; returns at once (Started).

        `pause_timeout`: how long the run may stay paused before it ends Stopped."""
        if ref is not None:
            try:
                check_ref(ref)
            except ValueError as exc:
                raise ConfigError([f"ref: {exc}"]) from None
        async with get_client() as client:
            deployment = await _deployment(client, app)
            settings = await _app_settings(client, app)
            if settings.get("require_worker_seconds"):
                reason = await _pool_reason(client, deployment.work_pool_name,
                                            deployment.work_queue_name,
                                            stale=float(settings["require_worker_seconds"]))
                if reason:
                    raise NoWorker(f"{app}: {reason} (require_worker_seconds: "
                                   f"{float(settings['require_worker_seconds']):g})")
            if (_concurrency or settings.get("concurrency") or "queue") == "reject":
                active = await client.read_flow_runs(
                    flow_run_filter=active_filter(app), sort=ACTIVE_SORT, limit=50)
                if active:
                    raise AppBusy(busy_message(app, active))
            parameters: dict[str, Any] = {"app": app, "ref": ref}
            if pause_timeout is not None:
                parameters["pause_timeout"] = pause_timeout
            if _retry_of is not None:
                parameters["retry_of"] = str(_retry_of)
            if _concurrency is not None:
                parameters["concurrency"] = _concurrency
            if _rollback_to is not None:
                parameters["rollback_to"] = _rollback_to
            # the idempotency key makes a request Prefect's client sends again (after a
            # connection broke) return the run a first attempt may have created
            flow_run = await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters,
                tags=[RUN_TAG, app_tag(app), trigger_tag(_trigger)],
                idempotency_key=f"deploy-runs-{uuid4()}")
        return run_from_prefect(flow_run, [])

    async def redeploy(self, app: str) -> Run:
        """A new run of `app` with the latest commit of its branch (after a push). Faster than
        a first deploy: provisioning is skipped when done, unchanged services are neither
        rebuilt nor restarted."""
        return await self.deploy(app, _trigger="redeploy")

    async def rollback(self, app: str, to: UUID | str | None = None) -> Run:
        """A new run (trigger `rollback`) that puts back the release of the Completed run `to`
        of `app` (default: the release before the current one): its images, not rebuilt while
        they are on the servers, and its runtime configuration (ports, env, health checks),
        with the app's secrets as they are now. Raises InvalidControl when there is no such
        release."""
        from deploy_runs.rollback import PREVIOUS, afind_target

        async with get_client() as client:
            await _deployment(client, app)
        target = await afind_target(app, str(to) if to is not None else PREVIOUS)
        return await self.deploy(app, target.commit or None, _trigger="rollback",
                                 _rollback_to=str(target.run_id))

    async def retry(self, run_id: UUID | str) -> Run:
        """A new run of a failed run's app at the same commit that reuses the failed run's
        completed steps whose inputs (commit, configuration) are unchanged, and starts at the
        failed step (or at the first step whose inputs changed)."""
        run = await self.get_run(run_id)
        if run.status is not RunStatus.FAILED:
            raise InvalidControl(f"run {run.id} is {run.status}, not Failed: only a failed run "
                                 "can be retried (deploy the app instead)")
        return await self.deploy(run.app, run.commit or run.ref, _retry_of=run.id,
                                 _trigger="retry")

    async def get_run(self, run_id: UUID | str) -> Run:
        """The run as recorded. One that ended a moment ago is read again until Prefect has
        recorded its steps' last states (they trail the run's own: `runs.read_finished`):
        read before, a step that ran could show as not run."""
        async with get_client() as client:
            return await read_finished(lambda: self._read_run(client, run_id))

    async def wait(self, run_id: UUID | str, timeout: float = 600.0,
                   poll_interval: float = 0.5) -> Run:
        """Wait until the run has ended (Completed, Failed or Stopped) and return it."""
        deadline = time.monotonic() + timeout
        async with get_client() as client:  # one client for every look (and no nested wait)
            while True:
                run = await self._read_run(client, run_id)
                if run.status.is_final:
                    return await read_finished(lambda: self._read_run(client, run_id))
                if time.monotonic() > deadline:
                    raise WaitTimeout(f"run {run.id} is still {run.status} after {timeout:g}s")
                await asyncio.sleep(poll_interval)

    async def _read_run(self, client: PrefectClient, run_id: UUID | str) -> Run:
        """One look at the run, as recorded now."""
        flow_run = await self._read_flow_run(client, _run_id(run_id))
        return (await self._assemble(client, [flow_run]))[0]

    async def runs(self, app: str | None = None,
                   status: RunStatus | str | Sequence[RunStatus | str] | None = None,
                   since: datetime | None = None, limit: int = 50, offset: int = 0) -> list[Run]:
        """Runs, most recent first: of one application, with one of the given statuses,
        created since a time; a page of `limit` runs after skipping `offset`. The server
        filters, sorts and pages."""
        statuses = _statuses(status)
        flow_filter = FlowFilter(name=FlowFilterName(any_=[DEPLOY_FLOW]))
        run_filter = history.run_filter(app, statuses, since=since)
        async with get_client() as client:
            flow_runs = await history._pages(
                lambda page, skip: client.read_flow_runs(
                    flow_filter=flow_filter, flow_run_filter=run_filter,
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=page, offset=skip),
                limit=limit, offset=offset)
            return await self._assemble(client, flow_runs)

    async def compare(self, run_a: UUID | str, run_b: UUID | str,
                      repo: str | Path | None = None) -> RunComparison:
        """Two runs side by side: steps (status, duration and difference), commits (and the
        commits between them, given a local clone `repo`), services rebuilt in each, config
        changes (variable names only), each run's error, and where the failing step's output
        first diverges."""
        async with get_client() as client:
            flow_a = await self._read_flow_run(client, _run_id(run_a))
            flow_b = await self._read_flow_run(client, _run_id(run_b))
            a, b = await self._assemble(client, [flow_a, flow_b])
            return await history.compare(client, a, b, flow_a, flow_b, repo)

    async def stats(self, app: str, days: int = 30) -> RunStats:
        """Deploys per day and week, success rate, median and p90 duration, median per step,
        time to recover, and the trend against the previous `days`."""
        async with get_client() as client:
            return await history.stats(client, app, days)

    async def recurring_failures(self, app: str | None = None,
                                 days: int = 90) -> list[RecurringFailure]:
        """Failed runs grouped by failure signature (kind, step, normalised error text)."""
        async with get_client() as client:
            return await history.recurring_failures(client, app, days)

    async def search_logs(self, pattern: str, app: str | None = None, days: int = 90,
                          limit: int = 200) -> list[LogMatch]:
        """Log lines containing `pattern` across past runs, most recent first."""
        async with get_client() as client:
            return await history.search_logs(client, pattern, app, days, limit)

    async def prune(self, app: str, keep: int | None = None) -> dict[str, list[str]]:
        """Remove the images and stopped containers of `app`'s releases older than its newest
        `keep` (default: the app's `keep_releases`) from its servers, now (a Completed run
        does it too): server -> what was removed. Refused (AppBusy) while a run of the app is
        active."""
        import contextvars

        from deploy_runs.releases import prune_app

        if keep is not None and keep < 1:
            raise ConfigError([f"keep: {keep}: at least 1 (the current release stays)"])
        async with get_client() as client:
            await _deployment(client, app)
            active = await client.read_flow_runs(flow_run_filter=active_filter(app),
                                                 sort=ACTIVE_SORT, limit=50)
            if active:
                raise AppBusy(f"{busy_message(app, active)}: prune once it has ended")
        return await asyncio.to_thread(contextvars.copy_context().run, prune_app, app, keep)

    # Notifications (a Prefect automation per subscription: deploy_runs/notify.py) ------------

    async def add_notification(self, app: str | None, on: str | Sequence[str],
                               block: str) -> Notification:
        """Tell the Prefect notification block `block` (TYPE/NAME, e.g. slack-webhook/ops)
        when a run of `app` (None: of every app) ends with one of the statuses `on`
        (Completed, Failed, Stopped; a crashed run is Failed). Adding it again changes nothing."""
        from deploy_runs import notify

        async with get_client() as client:
            if app is not None:
                await _deployment(client, app)
            return await notify.add(client, app, on, block)

    async def notifications(self, app: str | None = None) -> list[Notification]:
        """The notifications set up, for `app` (and for every app), or all."""
        from deploy_runs import notify

        async with get_client() as client:
            return await notify.listing(client, app)

    async def remove_notification(self, which: UUID | str) -> Notification:
        """Remove a notification, by its id or name."""
        from deploy_runs import notify

        async with get_client() as client:
            return await notify.remove(client, str(which))

    # Run controls ------------------------------------------------------------------------------

    async def pause(self, run_id: UUID | str) -> Run:
        """Pause: the running step finishes, then the run waits (Paused). Idempotent."""
        async with get_client() as client:
            flow_run, run = await self._current(client, run_id)
            if run.status.is_final:
                raise InvalidControl(f"cannot pause run {run.id}: it has already ended "
                                     f"({run.status})")
            if run.status is not RunStatus.PAUSED and requested(flow_run) != PAUSE:
                if requested(flow_run) == STOP:
                    raise InvalidControl(f"cannot pause run {run.id}: it is being stopped")
                await client.update_flow_run_labels(flow_run.id, {CONTROL_LABEL: PAUSE})
            return await self.get_run(flow_run.id)

    async def resume(self, run_id: UUID | str) -> Run:
        """Resume a paused run: it continues with the next step (finished steps never re-run).

        A pause that was requested but not reached yet is withdrawn."""
        async with get_client() as client:
            flow_run, run = await self._current(client, run_id)
            if run.status is RunStatus.PAUSED:
                if requested(flow_run) == PAUSE:
                    await client.update_flow_run_labels(flow_run.id, {CONTROL_LABEL: ""})
                await client.resume_flow_run(flow_run.id)
            elif not run.status.is_final and requested(flow_run) == PAUSE:
                await client.update_flow_run_labels(flow_run.id, {CONTROL_LABEL: ""})
            else:
                raise InvalidControl(f"cannot resume run {run.id}: it is {run.status}, "
                                     "not Paused")
            return await self.get_run(flow_run.id)

    async def stop(self, run_id: UUID | str) -> Run:
        """Stop: no further step starts, the running step is interrupted and its command killed
        on the server, remaining steps are Skipped; finished steps are not rolled back."""
        async with get_client() as client:
            flow_run, run = await self._current(client, run_id)
            if run.status.is_final:
                raise InvalidControl(f"cannot stop run {run.id}: it has already ended "
                                     f"({run.status})")
            await client.update_flow_run_labels(flow_run.id, {CONTROL_LABEL: STOP})
            state = flow_run.state
            waiting = state is None or (state.type in (StateType.SCHEDULED, StateType.PENDING)
                                        and state.name != "Resuming")
            suspended = bool(state and state.type is StateType.PAUSED
                             and state.name == "Suspended")
            if waiting or suspended:
                # No flow process is running it (yet, or any more): end it here.
                where = "while suspended" if suspended else "before it started running"
                await client.set_flow_run_state(
                    flow_run.id, Cancelled(message=f"Stopped by request {where}."), force=True)
            return await self.get_run(flow_run.id)

    async def _current(self, client: PrefectClient, run_id: UUID | str) -> tuple[FlowRun, Run]:
        flow_run = await self._read_flow_run(client, _run_id(run_id))
        return flow_run, (await self._assemble(client, [flow_run]))[0]

    async def logs(self, run_id: UUID | str, step: str | None = None,
                   follow: bool = False) -> AsyncIterator[LogLine]:
        """The run's log lines (or one step's), oldest first. With `follow=True`, keep
        yielding new lines as they arrive and end by itself once the run has ended."""
        async with get_client() as client:
            flow_run = await self._read_flow_run(client, _run_id(run_id))

            async def ended() -> bool:
                fresh = await client.read_flow_run(flow_run.id)
                if not (fresh.state and fresh.state.is_final()):
                    return False
                return finished((await self._assemble(client, [fresh]))[0])

            async for line in alogs(client, flow_run.id, step, follow, ended):
                yield line

    # ------------------------------------------------------------------------------------------

    @staticmethod
    async def _read_flow_run(client: PrefectClient, run_id: UUID) -> FlowRun:
        try:
            flow_run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise RunNotFound(f"no run {run_id}") from None
        if RUN_TAG not in (flow_run.tags or []) and "app" not in (flow_run.parameters or {}):
            raise RunNotFound(f"{run_id} is a Prefect flow run, but not a deploy run")
        return flow_run

    @staticmethod
    async def _assemble(client: PrefectClient, flow_runs: list[FlowRun]) -> list[Run]:
        if not flow_runs:
            return []
        task_filter = TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[f.id for f in flow_runs]))
        task_runs = await history._pages(lambda limit, offset: client.read_task_runs(
            task_run_filter=task_filter, limit=limit, offset=offset))
        by_flow_run: dict[UUID, list] = {}
        for task_run in task_runs:
            by_flow_run.setdefault(task_run.flow_run_id, []).append(task_run)
        failures = await asyncio.gather(*(
            _read_failure(client, f.id) if f.state and f.state.is_failed() else _none()
            for f in flow_runs))
        runs = [run_from_prefect(flow_run, by_flow_run.get(flow_run.id, []), failure)
                for flow_run, failure in zip(flow_runs, failures, strict=True)]
        # a run no worker has taken says why (once per pool and queue)
        now = datetime.now(UTC)
        reasons: dict[tuple[str | None, str | None], str | None] = {}
        for flow_run, run in zip(flow_runs, runs, strict=True):
            if overdue(flow_run, now):
                key = (flow_run.work_pool_name, flow_run.work_queue_name)
                if key not in reasons:
                    reasons[key] = await _pool_reason(client, *key)
                run.waiting_reason = reasons[key]
        # which Completed runs are their app's current release (its newest Completed run)
        apps = {r.app for r in runs if r.status is RunStatus.COMPLETED and r.app}
        current = dict(zip(apps, await asyncio.gather(*(_current_release(client, a)
                                                          for a in apps)), strict=True))
        for run in runs:
            run.current = run.status is RunStatus.COMPLETED and current.get(run.app) == run.id
        return runs


async def _deployment(client: PrefectClient, app: str) -> Any:
    """The app's Prefect deployment; AppNotFound when there is none."""
    try:
        return await client.read_deployment_by_name(deployment_name(app))
    except ObjectNotFound:
        raise AppNotFound(f"no application {app!r}: add it with `deploy-runs apps add "
                          "SPEC.yaml`") from None


async def _current_release(client: PrefectClient, app: str) -> UUID | None:
    """The app's newest Completed run: the release its servers run."""
    from deploy_runs.rollback import completed_filter

    found = await client.read_flow_runs(flow_run_filter=completed_filter(app),
                                        sort=FlowRunSort.END_TIME_DESC, limit=1)
    return found[0].id if found else None


async def _app_settings(client: PrefectClient, app: str) -> dict[str, Any]:
    """The application's block fields (read without its secrets)."""
    try:
        document = await client.read_block_document_by_name(
            app, Application.get_block_type_slug(), include_secrets=False)
    except ObjectNotFound:
        return {}
    return dict(document.data)


async def _pool_reason(client: PrefectClient, pool: str | None, queue: str | None,
                       stale: float = NO_WORKER_SECONDS) -> str | None:
    """Why runs of a work pool (queue) are not taken, from the pool's facts: paused, or no
    worker asked it for runs within `stale` seconds (runs.waiting_reason). None when a worker
    did, or when the pool cannot be read."""
    if not pool:
        return None
    try:
        work_pool = await client.read_work_pool(pool)
        queues = await client.read_work_queues(work_pool_name=pool)
    except (ObjectNotFound, PrefectHTTPStatusError):
        return None
    polled = [q.last_polled for q in queues if q.last_polled and (not queue or q.name == queue)]
    return waiting_reason(pool, max(polled) if polled else None, datetime.now(UTC),
                          paused=bool(work_pool.is_paused), stale=stale)


async def _none() -> None:
    return None


def _statuses(status: RunStatus | str | Sequence[RunStatus | str] | None) -> list[RunStatus]:
    if status is None:
        return []
    values = [status] if isinstance(status, str | RunStatus) else list(status)
    try:
        return [RunStatus(v) if not isinstance(v, RunStatus) else v for v in values]
    except ValueError:
        raise ConfigError([f"status: one of {', '.join(s.value for s in RunStatus)}"]) from None


async def _read_failure(client: PrefectClient, run_id: UUID) -> Failure | None:
    try:
        value = await client.read_flow_run_input(run_id, FAILURE_KEY)
    except (ObjectNotFound, PrefectHTTPStatusError):
        return None
    return Failure.model_validate_json(value) if value else None


class DeployRuns:
    """The same API as `AsyncDeployRuns`, blocking."""

    def __init__(self) -> None:
        self._async = AsyncDeployRuns()

    @staticmethod
    def _sync(coro: Coroutine[Any, Any, T]) -> T:
        return run_coro_as_sync(coro)  # type: ignore[return-value]

    def deploy(self, app: str, ref: str | None = None,
               pause_timeout: float | None = None) -> Run:
        return self._sync(self._async.deploy(app, ref, pause_timeout))

    def redeploy(self, app: str) -> Run:
        return self._sync(self._async.redeploy(app))

    def rollback(self, app: str, to: UUID | str | None = None) -> Run:
        return self._sync(self._async.rollback(app, to))

    def retry(self, run_id: UUID | str) -> Run:
        return self._sync(self._async.retry(run_id))

    def get_run(self, run_id: UUID | str) -> Run:
        return self._sync(self._async.get_run(run_id))

    def wait(self, run_id: UUID | str, timeout: float = 600.0, poll_interval: float = 0.5) -> Run:
        return self._sync(self._async.wait(run_id, timeout, poll_interval))

    def runs(self, app: str | None = None,
             status: RunStatus | str | Sequence[RunStatus | str] | None = None,
             since: datetime | None = None, limit: int = 50, offset: int = 0) -> list[Run]:
        return self._sync(self._async.runs(app, status, since, limit, offset))

    def compare(self, run_a: UUID | str, run_b: UUID | str,
                repo: str | Path | None = None) -> RunComparison:
        return self._sync(self._async.compare(run_a, run_b, repo))

    def stats(self, app: str, days: int = 30) -> RunStats:
        return self._sync(self._async.stats(app, days))

    def recurring_failures(self, app: str | None = None, days: int = 90) -> list[RecurringFailure]:
        return self._sync(self._async.recurring_failures(app, days))

    def search_logs(self, pattern: str, app: str | None = None, days: int = 90,
                    limit: int = 200) -> list[LogMatch]:
        return self._sync(self._async.search_logs(pattern, app, days, limit))

    def prune(self, app: str, keep: int | None = None) -> dict[str, list[str]]:
        return self._sync(self._async.prune(app, keep))

    def add_notification(self, app: str | None, on: str | Sequence[str],
                         block: str) -> Notification:
        return self._sync(self._async.add_notification(app, on, block))

    def notifications(self, app: str | None = None) -> list[Notification]:
        return self._sync(self._async.notifications(app))

    def remove_notification(self, which: UUID | str) -> Notification:
        return self._sync(self._async.remove_notification(which))

    def pause(self, run_id: UUID | str) -> Run:
        return self._sync(self._async.pause(run_id))

    def resume(self, run_id: UUID | str) -> Run:
        return self._sync(self._async.resume(run_id))

    def stop(self, run_id: UUID | str) -> Run:
        return self._sync(self._async.stop(run_id))

    def logs(self, run_id: UUID | str, step: str | None = None,
             follow: bool = False) -> Iterator[LogLine]:
        run = self.get_run(run_id)
        with get_client(sync_client=True) as client:

            def ended() -> bool:
                fresh = client.read_flow_run(run.id)
                if not (fresh.state and fresh.state.is_final()):
                    return False
                return finished(run_from_prefect(fresh, client.read_task_runs(
                    task_run_filter=TaskRunFilter(
                        flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))))

            yield from logs_sync(client, run.id, step, follow, ended)


def api_unavailable(exc: BaseException) -> APIUnavailable | None:
    """The error to raise for `exc` when it says the Prefect API does not answer."""
    if isinstance(exc, APIUnavailable):
        return exc
    if isinstance(exc, httpx.TransportError):
        return APIUnavailable(PREFECT_API_URL.value(), exc)
    return None


def _said_plainly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a public method of the Python API) raising APIUnavailable, which names the API's
    URL, when the Prefect API does not answer, instead of httpx's error."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except httpx.TransportError as exc:
                raise api_unavailable(exc) from exc
        return agen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except httpx.TransportError as exc:
                raise api_unavailable(exc) from exc
        return coro
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except httpx.TransportError as exc:
                raise api_unavailable(exc) from exc
        return gen

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except httpx.TransportError as exc:
            raise api_unavailable(exc) from exc
    return call


for _api in (AsyncDeployRuns, DeployRuns):
    for _name, _fn in list(vars(_api).items()):
        if not _name.startswith("_") and inspect.isfunction(_fn):
            setattr(_api, _name, _said_plainly(_fn))


__all__ = ["AsyncDeployRuns", "DeployRuns", "RunStatus"]
