"""SQLite read-then-write requests begin IMMEDIATE: they wait for the write lock instead of
failing busy.

Covers Prefect 3.9.0-3.9.1 (server side): `AioSqliteConfiguration.begin_transaction`
(prefect.server.database.configurations), Prefect's hook for a database configuration
(`set_database_config`). No upstream issue found.

On SQLite, Prefect's server answers 503 when a write transaction that began by reading finds
that another writer committed in between (SQLITE_BUSY: no busy timeout waits that out), and its
clients send the request again after 2 s, then 4 s, 8 s... Prefect's rule for its SQLite code is
that a transaction that reads, then writes begins IMMEDIATE (it takes the write lock first);
Prefect 3.9.1 begins a few such write requests deferred. Measured over 30 no-change redeploys,
59 requests were answered busy: label updates (39), flow-run creation (10), concurrency-slot
requests (8), automation deletes (2). Those requests (`begins_immediate`) begin IMMEDIATE here
(and a deployment's flow-run creation, deploy-runs' way to start a run): then none was, and 20
deploys requested at once (`bench/scale.py`, SQLite) ran 21.6-21.7 a minute instead of 10.6.

Two more layers used to catch the busy answers that were left: a retry of the request in the
server (`RetryWhenBusy`) and a client-side resend that reached into Prefect's httpx client.
Measured with IMMEDIATE on (bench/redeploy.py, 15 runs a variant; bench/scale.py at 5 and 20
deploys at once, 3 rounds a variant, the variants interleaved): no figure changed beyond noise
with either, both or neither, and no request of a run was answered busy at all (the few left
were app registrations and worker heartbeats). Both were removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUSY_BODY = {"exception_message": "Service Unavailable"}  # Prefect's retryable-error answer

# Set for the request being handled: its SQLite transactions begin IMMEDIATE.
_BEGIN_IMMEDIATE: ContextVar[bool] = ContextVar("deploy_runs_begin_immediate", default=False)


def begins_immediate(method: str, path: str) -> bool:
    """Requests whose transactions read, then write: every update and delete, and the creates
    that look first (a flow run, also from a deployment: its idempotency key; a concurrency
    slot: the limit's count)."""
    if method in ("PATCH", "PUT", "DELETE"):
        return True
    return method == "POST" and (
        path.rstrip("/").endswith(("/flow_runs", "/create_flow_run"))
        or ("/concurrency_limits/" in path and path.endswith("-with-lease")))


def sqlite_configuration(connection_url: str) -> Any:
    """Prefect's SQLite database configuration, whose transactions begin IMMEDIATE during a
    request `begins_immediate` picked (as Prefect's own `with_for_update=True` does)."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    class ImmediateWrites(AioSqliteConfiguration):
        @contextlib.asynccontextmanager
        async def begin_transaction(self, session: Any, with_for_update: bool = False
                                    ) -> AsyncIterator[Any]:
            immediate = with_for_update or _BEGIN_IMMEDIATE.get()
            async with super().begin_transaction(session, immediate) as transaction:
                yield transaction

    return ImmediateWrites(connection_url=connection_url)


class BeginImmediate:
    """ASGI middleware: the request's SQLite transactions begin IMMEDIATE when
    `begins_immediate` picks it (read by `sqlite_configuration`'s transactions)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        marked = _BEGIN_IMMEDIATE.set(
            begins_immediate(scope.get("method", ""), scope.get("path", "")))
        try:
            await self.app(scope, receive, send)
        finally:
            _BEGIN_IMMEDIATE.reset(marked)
