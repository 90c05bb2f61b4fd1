"""What each piece of the seam (deploy_runs/prefect_compat) relies on in Prefect: its private
names, the behaviour it works around, the code it copies. A Prefect upgrade that changes one
fails here, naming the piece, before anything else breaks. CI runs this module against the
oldest and the newest Prefect the pin allows (.ci/run)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import sqlite3
from importlib.metadata import version

import pytest

from deploy_runs import prefect_compat

PREFECT = version("prefect")


def _source_hash(obj: object) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(prefect_compat.COPIED))
def test_copied_code_is_what_prefect_still_has(name):
    module, copy, hashes = prefect_compat.COPIED[name]
    owner, _, attribute = name.rpartition(".")
    obj = getattr(getattr(importlib.import_module(module), owner), attribute)
    found = _source_hash(obj)
    assert found in hashes.values(), (
        f"Prefect {PREFECT} changed {module}.{name}, which prefect_compat.{copy} copies: "
        f"compare the copy with Prefect's code, then record {found!r} for {PREFECT} in "
        "prefect_compat.COPIED")


def test_private_modules_of_the_warm_worker_are_there():
    """warm_worker: Prefect's runner internals it starts a run through."""
    from prefect.runner._control_channel import ControlChannel
    from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
    from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope

    for name in ("create_executor", "control_channel", "process_manager"):
        assert name in inspect.getsource(FlowRunExecutorContext), \
            f"warm_worker: FlowRunExecutorContext has no {name} in Prefect {PREFECT}"
    assert {"status_code", "handle"} <= set(inspect.signature(FlowRunExecutionResult).parameters)
    assert "termination_scope" in inspect.signature(ProcessHandle).parameters
    assert list(inspect.signature(create_isolated_termination_scope).parameters)[:1] == ["pid"]
    assert callable(ControlChannel.register) and callable(ControlChannel.unregister)


def test_process_job_configuration_says_whether_its_command_is_set():
    """warm_worker.warm_start_applies reads ProcessJobConfiguration._command_configured."""
    from prefect.workers.process import ProcessJobConfiguration

    assert "_command_configured" in ProcessJobConfiguration.__private_attributes__, \
        f"warm_worker: ProcessJobConfiguration._command_configured is gone in Prefect {PREFECT}"


def test_api_clients_build_their_tls_context_through_the_module_ssl():
    """tls: Prefect's client module calls `ssl.create_default_context` through its own `ssl`
    name, which share_tls_context replaces."""
    import prefect.client.orchestration as orchestration

    assert hasattr(orchestration, "ssl"), "tls: prefect.client.orchestration has no `ssl`"
    assert "ssl.create_default_context(cafile=" in inspect.getsource(orchestration), \
        f"tls: Prefect {PREFECT}'s clients no longer build a context from a CA file"


def test_the_server_answers_retryable_errors_503_by_a_module_level_rule():
    """database_away: Prefect's handler answers 503 with the body AnswerDatabaseAway answers
    too, for the errors of `is_client_retryable_exception`, looked up at call time (so
    database_away_is_retryable can widen it)."""
    import prefect.server.api.server as server

    from deploy_runs.prefect_compat.busy_sqlite import BUSY_BODY

    handler = server.custom_internal_exception_handler
    assert "is_client_retryable_exception" in handler.__code__.co_names
    assert f"\"{BUSY_BODY['exception_message']}\"" in inspect.getsource(handler)
    busy = __import__("sqlalchemy.exc").exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert server.is_client_retryable_exception(busy), \
        "database_away: a locked SQLite database is no longer a retryable error"


def test_the_sqlite_configuration_takes_a_begin_mode_per_transaction():
    """busy_sqlite.sqlite_configuration overrides AioSqliteConfiguration.begin_transaction."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    parameters = list(inspect.signature(AioSqliteConfiguration.begin_transaction).parameters)
    assert parameters[:3] == ["self", "session", "with_for_update"], \
        f"busy_sqlite: begin_transaction is now {parameters} in Prefect {PREFECT}"


def test_the_log_worker_has_what_step_logs_extend():
    """log_delivery.StepLogWorker extends APILogWorker through these names."""
    from prefect.logging.handlers import APILogWorker

    for name in ("_prepare_item", "_main_loop", "_get_item", "_get_size", "_handle_batch",
                 "_instances", "_instance_cache_lock", "instance", "send", "min_interval",
                 "max_batch_size"):
        assert hasattr(APILogWorker, name), \
            f"log_delivery: APILogWorker.{name} is gone in Prefect {PREFECT}"
    init = "".join(inspect.getsource(c.__init__) for c in APILogWorker.__mro__
                   if "__init__" in vars(c) and c.__module__.startswith("prefect"))
    for name in ("self._queue", "self._lock", "self._stopped", "self._done_event"):
        assert name in init, f"log_delivery: the log worker no longer sets {name}"


def test_sync_compatible_calls_take_the_private_sync_keyword():
    """sync_calls: Block.load, State.result and create_markdown_artifact dispatch on `_sync`."""
    from prefect._internal.compatibility.async_dispatch import async_dispatch
    from prefect.artifacts import create_markdown_artifact
    from prefect.blocks.core import Block
    from prefect.client.schemas.objects import State

    for fn in (Block.load, State.result, create_markdown_artifact):
        assert hasattr(fn, "aio"), f"sync_calls: {fn.__qualname__} is not async_dispatch'ed"

    async def fetch() -> str:
        return "async"

    @async_dispatch(fetch)
    def fetch_sync() -> str:
        return "sync"

    async def in_a_loop() -> str:
        return fetch_sync(_sync=True)  # type: ignore[call-arg]

    assert asyncio.run(in_a_loop()) == "sync"


def test_a_failed_state_gives_its_exception_blocking():
    from prefect.states import Failed

    from deploy_runs.prefect_compat.sync_calls import state_result

    error = ValueError("broke")

    async def in_a_loop() -> object:
        return await asyncio.to_thread(state_result, Failed(data=error))

    assert state_result(Failed(data=error)) is error
    assert asyncio.run(in_a_loop()) is error


def test_the_ui_history_route_takes_and_gives_what_history_reads():
    """ui_history: POST /ui/flow_runs/history with sort, limit, offset, flow_runs; rows of id,
    state_type, timestamp, duration."""
    from prefect.server.api.ui.flow_runs import SimpleFlowRun, router

    from deploy_runs.prefect_compat.ui_history import PATH

    routes = {(r.path, m) for r in router.routes for m in getattr(r, "methods", ())}
    assert (PATH, "POST") in routes, f"ui_history: no POST {PATH} in Prefect {PREFECT}"
    endpoint = next(r.endpoint for r in router.routes if r.path == PATH)
    assert {"sort", "limit", "offset", "flow_runs"} <= set(inspect.signature(endpoint).parameters)
    assert {"id", "state_type", "timestamp", "duration"} <= set(SimpleFlowRun.model_fields)


def test_the_process_manager_still_signals_runs_when_the_worker_stops():
    """warm_worker.detach and forkserver work around this: a process manager that no longer
    signals its runs on exit would make both unnecessary (then remove them)."""
    from prefect.runner import _process_manager

    source = inspect.getsource(_process_manager)
    assert "SIGTERM" in source or "terminate" in source, \
        "warm_worker.detach: Prefect's process manager no longer signals runs on exit"
