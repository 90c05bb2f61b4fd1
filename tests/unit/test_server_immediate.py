"""The local server begins the transactions of read-then-write requests IMMEDIATE on SQLite
(deploy_runs/prefect_compat/busy_sqlite.py): such a request waits for the write lock instead of
failing busy."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy
from prefect.server.database.configurations import SQLITE_BEGIN_MODE

from deploy_runs.prefect_compat.busy_sqlite import (
    _BEGIN_IMMEDIATE,
    BeginImmediate,
    begins_immediate,
    sqlite_configuration,
)


@pytest.mark.parametrize(("method", "path", "immediate"), [
    ("PATCH", "/api/flow_runs/0b6a/labels", True),
    ("PATCH", "/api/flow_runs/0b6a", True),
    ("DELETE", "/api/automations/owned-by/prefect.deployment.0b6a", True),
    ("PUT", "/api/work_pools/x", True),
    ("POST", "/api/flow_runs/", True),
    ("POST", "/api/v2/concurrency_limits/increment-with-lease", True),
    ("POST", "/api/v2/concurrency_limits/decrement-with-lease", True),
    ("POST", "/api/flow_runs/filter", False),
    ("POST", "/api/task_runs/filter", False),
    ("POST", "/api/logs/", False),
    ("POST", "/api/v2/concurrency_limits/filter", False),
    ("GET", "/api/flow_runs/0b6a", False),
    ("POST", "/api/deployments/0b6a/create_flow_run", True),
])
def test_which_requests_begin_immediate(method, path, immediate):
    assert begins_immediate(method, path) is immediate


def test_the_middleware_marks_the_request_it_passes_on():
    seen = []

    async def app(scope, receive, send):
        seen.append(_BEGIN_IMMEDIATE.get())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        pass

    async def requests() -> list[bool]:
        middleware, after = BeginImmediate(app), []
        for method, path in (("PATCH", "/api/flow_runs/1/labels"),
                             ("POST", "/api/flow_runs/filter"),
                             ("POST", "/api/deployments/1/create_flow_run")):
            scope = {"type": "http", "method": method, "path": path, "root_path": "",
                     "state": {}}
            await middleware(scope, receive, send)
            after.append(_BEGIN_IMMEDIATE.get())  # in the caller's context: not left set
        return after

    assert asyncio.run(requests()) == [False, False, False]
    assert seen == [True, False, True]


def test_the_server_app_uses_the_configuration_on_sqlite(tmp_path):
    from prefect.server.database.dependencies import provide_database_interface, set_database_config
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    from deploy_runs.prefect_server import create_app

    url = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    try:
        with temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: url}):
            create_app()
            config = provide_database_interface().database_config
        assert type(config).__name__ == "ImmediateWrites"
        assert config.connection_url == url
    finally:
        set_database_config(None)  # the next user infers Prefect's own again


@pytest.mark.parametrize(("marked", "with_for_update", "mode"), [
    (True, False, "IMMEDIATE"), (False, False, "DEFERRED"), (False, True, "IMMEDIATE")])
def test_a_marked_request_holds_the_write_lock_from_the_start(tmp_path, marked,
                                                             with_for_update, mode):
    db = tmp_path / "prefect.db"
    config = sqlite_configuration(f"sqlite+aiosqlite:///{db}")

    async def transaction() -> tuple[str | None, bool]:
        engine = await config.engine()
        try:
            _BEGIN_IMMEDIATE.set(marked)
            session = await config.session(engine)
            async with session, config.begin_transaction(session, with_for_update) as tx:
                # BEGIN is sent with the first statement
                await tx.session.execute(sqlalchemy.text("SELECT 1"))
                return SQLITE_BEGIN_MODE.get(), other_writer_waits(db)
        finally:
            await engine.dispose()

    begun, locked = asyncio.run(transaction())
    assert begun == mode
    assert locked is (mode == "IMMEDIATE")


def other_writer_waits(db) -> bool:
    """True if another connection cannot take the write lock now."""
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    else:
        other.execute("ROLLBACK")
        return False
    finally:
        other.close()
