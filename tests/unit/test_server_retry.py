"""The local server's 503 ("try again") for a database that does not answer or is busy
(deploy_runs/prefect_compat/database_away.py), on plain ASGI apps."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
import sqlalchemy.exc

from deploy_runs.prefect_compat.busy_sqlite import BUSY_BODY

BUSY = json.dumps(BUSY_BODY).encode()


def sqlite_busy() -> Exception:
    return sqlalchemy.exc.OperationalError("UPDATE flow_run ...", {},
                                           sqlite3.OperationalError("database is locked"))


def call(app, body: bytes = b'{"x": 1}', scope_type: str = "http", path: str = "/api/runs/",
         sent: list[dict] | None = None):
    """Send one request through `app`; (messages sent to the client, scope after)."""
    scope = {"type": scope_type, "path": path, "root_path": "", "state": {}}
    chunks = [body[:3], body[3:]]
    sent = [] if sent is None else sent

    async def receive():
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, scope


def answer(status: int, body: bytes, headers=()):
    return [{"type": "http.response.start", "status": status, "headers": list(headers)},
            {"type": "http.response.body", "body": body}]


# A database that does not answer (prefect_compat.database_away) ---------------------------

def raising_after(status: int | None, error: Exception):
    """An app that (like Starlette's ServerErrorMiddleware) answers `status`, then raises."""
    async def app(scope, receive, send):
        if status is not None:
            for message in answer(status, b"Internal Server Error"):
                await send(message)
        raise error
    return app


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "Connection refused"),
                                   TimeoutError("connect timed out"), sqlite_busy()])
def test_a_database_that_does_not_answer_is_answered_503_try_again(error):
    from deploy_runs.prefect_compat.database_away import AnswerDatabaseAway, database_away_is_retryable

    database_away_is_retryable()
    sent, _ = call(AnswerDatabaseAway(raising_after(500, error)))
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [503]
    assert json.loads(b"".join(m.get("body", b"") for m in sent)) == BUSY_BODY
    # the same before any answer was made
    sent, _ = call(AnswerDatabaseAway(raising_after(None, error)))
    assert sent[0]["status"] == 503


def test_other_errors_keep_their_500_and_are_raised():
    from deploy_runs.prefect_compat.database_away import AnswerDatabaseAway

    with pytest.raises(ZeroDivisionError):
        call(AnswerDatabaseAway(raising_after(500, ZeroDivisionError())))
    sent: list[dict] = []
    with pytest.raises(ValueError):
        call(AnswerDatabaseAway(raising_after(500, ValueError("bad"))), sent=sent)
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"Internal Server Error"


def test_an_answer_already_sent_is_not_changed():
    from deploy_runs.prefect_compat.database_away import AnswerDatabaseAway

    sent: list[dict] = []
    with pytest.raises(ConnectionRefusedError):
        call(AnswerDatabaseAway(raising_after(200, ConnectionRefusedError())), sent=sent)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
