"""A database that does not answer (stopped, restarting) is a 503 ("try again"), not a 500.

Covers Prefect 3.9.0-3.9.1 (`prefect.server.api.server.is_client_retryable_exception`, and its
CSRF middleware, which reads the database before any route). No upstream issue found.
"""

from __future__ import annotations

import json
import logging

from deploy_runs.prefect_compat.busy_sqlite import (
    BUSY_BODY,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)

_log = logging.getLogger("deploy_runs.prefect_server")


def database_away_is_retryable() -> None:
    """Answer 503 ("try again"), not 500, while the database does not answer.

    Prefect 3.9.1's server answers 503 for the database errors a client may retry
    (`is_client_retryable_exception`: SQLite busy, SQLAlchemy's DBAPIError, asyncpg's
    CannotConnectNowError...), and its clients retry a 503 (five times, 2-32 s apart). But
    while PostgreSQL is restarting, opening a connection raises the socket's own
    ConnectionRefusedError, which SQLAlchemy does not wrap: 500, which no client retries. Every
    log batch and state write sent during a 10 s restart was lost (measured: 41 of a build's
    160 lines, tests/integration/test_scale.py). Here a connection error or timeout is
    retryable too. No upstream issue found; remove when Prefect's own rule covers it."""
    import prefect.server.api.server as prefect_server

    original = prefect_server.is_client_retryable_exception
    if getattr(original, "deploy_runs", False):
        return

    def retryable(exc: Exception) -> bool:
        return original(exc) or isinstance(exc, ConnectionError | TimeoutError)

    retryable.deploy_runs = True  # type: ignore[attr-defined]
    prefect_server.is_client_retryable_exception = retryable


def database_away(exc: BaseException) -> bool:
    """An error of a database that does not answer (stopped, restarting) or is busy, by
    Prefect's rule of errors its clients may retry (with `database_away_is_retryable`)."""
    from prefect.server.api.server import is_client_retryable_exception

    return isinstance(exc, Exception) and is_client_retryable_exception(exc)


class AnswerDatabaseAway:
    """ASGI middleware: a request whose database work failed because the database does not
    answer, raised past Prefect's exception handlers, is answered 503 with Prefect's "try
    again" body, as Prefect answers such errors inside its routes. Prefect 3.9.1's CSRF
    middleware reads the token from the database before any route and lets the error out:
    uvicorn answered 500, which no client retries (every log batch and state write of a run
    during a PostgreSQL restart was lost, with CSRF protection on, as deploy-runs' server has
    it). A 500 is held (a small answer) until the request is done, to be replaced then."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = False
        held: list[Message] = []

        async def guarded(message: Message) -> None:
            nonlocal sent
            if held or (message["type"] == "http.response.start" and not sent
                        and message.get("status") == 500):
                held.append(message)
                return
            sent = True
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception as exc:
            if sent or not database_away(exc):
                for message in held:
                    await send(message)
                raise
            body = json.dumps(BUSY_BODY).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            _log.warning("the database does not answer (%s: %s): answered 503 to %s %s",
                         type(exc).__name__, exc, scope.get("method"), scope.get("path"))
            return
        for message in held:
            await send(message)
