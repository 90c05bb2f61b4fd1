"""The local server's retry of busy-store answers and its 503 for a database away
(deploy_runs/prefect_compat/busy_sqlite.py, database_away.py), on plain ASGI apps."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
import sqlalchemy.exc

from deploy_runs.prefect_compat.busy_sqlite import BUSY_BODY, RetryWhenBusy, waits

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


class Scripted:
    """An app that answers from a script, records what each attempt saw, and writes into its
    scope as routing does."""

    def __init__(self, *answers, error=sqlite_busy) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[str, str, bytes]] = []
        self.error = error

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.seen.append((scope["path"], scope["root_path"], message["body"]))
        scope["root_path"] = "/api"  # as a Starlette Mount does
        scope["state"]["touched"] = True
        status, body, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        for part in answer(status, body, headers):
            await send(part)
        if status == 503 and body == BUSY and not headers:
            raise self.error()  # Starlette raises the error again after its handler answered


def test_waits_double_up_to_the_longest_and_fit_the_patience():
    assert waits(0.2)[:3] == [0.01, 0.02, 0.04]
    assert sum(waits(5.0)) <= 5.0 and max(waits(5.0)) == 0.25


def test_a_busy_answer_is_retried_until_the_app_answers_otherwise():
    app = Scripted((503, BUSY, []), (503, BUSY, []), (201, b'{"id": 7}', []))
    sent, scope = call(RetryWhenBusy(app))
    assert [m.get("status") for m in sent] == [201, None]
    assert sent[1]["body"] == b'{"id": 7}'
    # each attempt got the whole body, and a scope without the previous attempt's writes
    assert app.seen == [("/api/runs/", "", b'{"x": 1}')] * 3
    assert scope["root_path"] == "" and scope["state"] == {}


def test_a_busy_answer_for_another_error_goes_out_at_once():
    # Prefect gives the same answer to PostgreSQL connection and session errors, after which
    # the write may have been committed: those are left to the client
    app = Scripted((503, BUSY, []), (200, b"ok", []),
                   error=lambda: sqlalchemy.exc.InvalidRequestError("session closed"))
    sent: list[dict] = []
    with pytest.raises(sqlalchemy.exc.InvalidRequestError):
        call(RetryWhenBusy(app), sent=sent)
    assert sent == answer(503, BUSY) and len(app.seen) == 1


def test_other_answers_go_out_as_they_are_and_run_once():
    for status, body, headers in ((500, b"Internal Server Error", []),
                                  (503, b'{"detail": "maintenance"}', []),
                                  (503, BUSY, [(b"retry-after", b"30")]),
                                  (200, b"fine", [])):
        app = Scripted((status, body, headers))
        sent, _ = call(RetryWhenBusy(app))
        assert sent == answer(status, body, headers), status
        assert len(app.seen) == 1


def test_an_error_without_the_busy_answer_is_not_retried():
    class Broken:
        calls = 0

        async def __call__(self, scope, receive, send):
            Broken.calls += 1
            await receive()
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call(RetryWhenBusy(Broken()))
    assert Broken.calls == 1


def test_a_store_that_stays_busy_gets_the_busy_answer_after_the_patience():
    app = Scripted((503, BUSY, []))
    started = time.monotonic()
    sent: list[dict] = []
    with pytest.raises(sqlalchemy.exc.OperationalError):  # logged by the server, as before
        call(RetryWhenBusy(app, patience=0.05), sent=sent)
    assert sent == answer(503, BUSY)
    assert 3 <= len(app.seen) <= len(waits(0.05)) + 2
    assert time.monotonic() - started < 1.0


def test_retries_run_one_at_a_time_in_the_server():
    # many requests busy at once: their retries are queued, not run together
    running, most, seen = [0], [0], set()

    async def app(scope, receive, send):
        body = (await receive())["body"]
        retry = body in seen
        seen.add(body)
        if retry:
            running[0] += 1
            most[0] = max(most[0], running[0])
        await asyncio.sleep(0.005)
        if retry:
            running[0] -= 1
        for part in answer(200, b"ok") if retry else answer(503, BUSY):
            await send(part)
        if not retry:
            raise sqlite_busy()

    middleware = RetryWhenBusy(app)

    async def one(n: int) -> list[dict]:
        sent: list[dict] = []
        bodies = [{"type": "http.request", "body": str(n).encode(), "more_body": False}]

        async def receive():
            return bodies.pop() if bodies else await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        await middleware({"type": "http", "path": "/", "root_path": ""}, receive, send)
        return sent

    async def all_of_them():
        return await asyncio.gather(*(one(n) for n in range(8)))

    results = asyncio.run(all_of_them())
    assert all(sent == answer(200, b"ok") for sent in results)
    assert most[0] == 1


def test_lifespan_and_websockets_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    for kind in ("lifespan", "websocket"):
        call(RetryWhenBusy(app), scope_type=kind)
    assert seen == ["lifespan", "websocket"]


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
                                   TimeoutError("connect timed out")])
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
