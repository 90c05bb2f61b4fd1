"""Busy SQLite writes: begun IMMEDIATE, and run again in the server instead of a 503.

Covers Prefect 3.9.0-3.9.1 (server side): `AioSqliteConfiguration.begin_transaction`
(prefect.server.database.configurations) and `is_client_retryable_exception`
(prefect.server.api.server). No upstream issue found for either.

On SQLite, Prefect's server answers 503 when a write transaction that began by reading finds
that another writer committed in between (SQLITE_BUSY: no busy timeout waits that out). It
rolled the transaction back, and Prefect's clients send the request again - after 2 s, then
4 s, 8 s... (their back-off when a 503 has no Retry-After). Every Prefect client in a run does
this: the engine creating the flow run or setting its state, the worker, the UI. Measured on a
no-change redeploy of `shop`: 1 run in 5 took 2 s longer, from one such 503.

`RetryWhenBusy` runs such a request again in the server, after 10 ms, 20 ms, 40 ms... up to
`PATIENCE` seconds, before it lets the 503 out: what the client would have done, without its
seconds of waiting. Retries run one at a time in the whole server: with 20 deploys at once,
retrying every busy request together kept the store busier still and started runs ~2.7x later
than Prefect's own back-off did; queued, they finished 2.5x sooner than with Prefect's back-off
(`bench/scale.py`, SQLite). Only Prefect's own "retry this" answers are retried (a 503 with Prefect's
"Service Unavailable" body and no Retry-After); a request is never run again after any other
answer. Lifespan and websocket traffic pass through untouched.

Fewer requests get there at all: Prefect's rule for its SQLite code is that a transaction that
reads, then writes begins IMMEDIATE (it takes the write lock first, so it waits for another
writer instead of failing); Prefect 3.9.1 begins a few such write requests deferred. Measured
over 30 no-change redeploys, 59 requests were retried: label updates (39), flow-run creation
(10), concurrency-slot requests (8), automation deletes (2). Those requests (`begins_immediate`)
begin IMMEDIATE here (and a deployment's flow-run creation, deploy-runs' way to start a run),
through Prefect's hook for the database configuration: then none was
retried, and 20 deploys requested at once (`bench/scale.py`, SQLite) ran 21.6-21.7 a minute
(two samples) instead of 10.6 (one sample), each taking 9-31 s (median) instead of 75 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from deploy_runs.prefect_compat.resend import waits as doubling_waits

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATIENCE = 5.0
FIRST_WAIT, LONGEST_WAIT = 0.01, 0.25
BUSY_BODY = {"exception_message": "Service Unavailable"}  # Prefect's retryable-error answer


def waits(patience: float = PATIENCE) -> list[float]:
    """Pauses between attempts: doubling from FIRST_WAIT to LONGEST_WAIT, `patience` in all."""
    return doubling_waits(patience, FIRST_WAIT, LONGEST_WAIT)


def basic_authorization(auth_string: str) -> bytes:
    """The Authorization header Prefect's client sends for `auth_string` (HTTP Basic)."""
    return b"Basic " + base64.b64encode(auth_string.encode())


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


def is_sqlite_busy(exc: BaseException) -> bool:
    """Prefect's own rule for errors its clients retry (`is_client_retryable_exception`),
    for SQLite only: a busy store rolled the transaction back, so running the request again
    is safe. Its other retryable errors, of PostgreSQL connections and sessions, may come
    after a commit and are left to the client."""
    from prefect.server.api.server import is_client_retryable_exception

    return (isinstance(exc, Exception) and isinstance(getattr(exc, "orig", None), sqlite3.Error)
            and is_client_retryable_exception(exc))


def is_busy_answer(start: Message, body: bytes) -> bool:
    """Prefect's answer to an error its clients retry: 503, no Retry-After, its fixed body."""
    if start.get("status") != 503:
        return False
    if any(name.lower() == b"retry-after" for name, _ in start.get("headers", [])):
        return False
    try:
        return json.loads(body or b"null") == BUSY_BODY
    except ValueError:
        return False


class RetryWhenBusy:
    """ASGI middleware: run a request again while Prefect answers it "busy, retry" (above)."""

    def __init__(self, app: ASGIApp, patience: float = PATIENCE,
                 auth_string: str | None = None) -> None:
        self.app = app
        self.patience = patience
        self.waits = waits(patience)
        self._retrying: asyncio.Lock | None = None
        self._authorization = basic_authorization(auth_string) if auth_string else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        marked = _BEGIN_IMMEDIATE.set(
            begins_immediate(scope.get("method", ""), scope.get("path", "")))
        try:
            await self._handle(scope, body, receive, send)
        finally:
            _BEGIN_IMMEDIATE.reset(marked)

    def _authorized(self, scope: Scope) -> bool:
        """With an auth string, only a request that carries it (as Prefect's client sends it) is
        buffered and may run again; any other goes straight to Prefect, which refuses it
        without reading its body (401; 403 first for a change without a CSRF token)."""
        if self._authorization is None:
            return True
        given = next((value for name, value in scope.get("headers", [])
                      if name.lower() == b"authorization"), b"")
        return hmac.compare_digest(given, self._authorization)

    async def _handle(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        if not await self._attempt(scope, body, receive, send, last=False):
            return
        if self._retrying is None:
            self._retrying = asyncio.Lock()
        deadline = time.monotonic() + self.patience
        for wait in self.waits:
            # One retry at a time in the whole server: retries of many requests at once kept
            # the store busier still (measured: 20 concurrent deploys started 2.7x later).
            # The wait for its turn counts against the patience too.
            if not await _acquire(self._retrying, deadline - time.monotonic()):
                break
            try:
                await asyncio.sleep(wait * random.uniform(0.8, 1.2))
                last = time.monotonic() > deadline
                if not await self._attempt(scope, body, receive, send, last=last) or last:
                    return
            finally:
                self._retrying.release()
        await self._attempt(scope, body, receive, send, last=True)

    async def _attempt(self, scope: Scope, body: bytes, receive: Receive, send: Send,
                       last: bool) -> bool:
        """Run the request once; True if it is to run again: Prefect gave the busy answer
        (held back, unless `last`) for a busy SQLite store."""
        answer = _Answer(send, last=last)
        try:
            await self.app(_fresh(scope), _replay(body, receive), answer.send)
        except Exception as exc:
            # Starlette raises the error again after its handler answered
            if answer.busy and is_sqlite_busy(exc):
                return True
            await answer.release()
            raise
        await answer.release()  # a busy answer without Prefect's error: not ours to retry
        return False


async def _acquire(lock: asyncio.Lock, timeout: float) -> bool:
    """`lock.acquire()` within `timeout` seconds; False (and not held) if the time passed."""
    acquiring = asyncio.ensure_future(lock.acquire())
    done, _ = await asyncio.wait({acquiring}, timeout=max(0.0, timeout))
    if done:
        return True
    acquiring.cancel()
    try:
        await acquiring
    except asyncio.CancelledError:
        return False
    lock.release()  # it was acquired just as the time passed
    return False


class _Answer:
    """Passes a response on as it comes, unless it is the busy answer: that one is held (it is
    two small messages), to be dropped when the request runs again, or released."""

    def __init__(self, send: Send, last: bool) -> None:
        self._send = send
        self._last = last
        self._start: Message | None = None
        self._held: list[Message] = []
        self.busy = False

    async def send(self, message: Message) -> None:
        if self._last:
            await self._send(message)
            return
        if message["type"] == "http.response.start" and message.get("status") == 503:
            self._start = message  # decided once the body is in
            return
        if self._start is not None and not self.busy:
            self._held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                body = b"".join(m.get("body", b"") for m in self._held
                                if m["type"] == "http.response.body")
                if is_busy_answer(self._start, body):
                    self.busy = True
                else:
                    await self.release()
            return
        await self._send(message)

    async def release(self) -> None:
        """Send what is held (a 503 that is not to be retried after all)."""
        if self._start is not None:
            start, held, self._start, self._held = self._start, self._held, None, []
            self.busy = False
            await self._send(start)
            for message in held:
                await self._send(message)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body (Prefect's requests are JSON, a log batch at most a few MB);
    True when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), False


def _fresh(scope: Scope) -> Scope:
    """The request's scope as the server gave it: routing writes into the scope it is given
    (root path, route), and a second pass must not see the first one's."""
    fresh = dict(scope)
    if isinstance(scope.get("state"), dict):
        fresh["state"] = dict(scope["state"])
    return fresh


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body, then waits on the client (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
