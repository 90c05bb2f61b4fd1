"""The Prefect server deploy-runs starts for itself (`prefect_local.start_server`): Prefect's own
server app, run by uvicorn as `prefect server start` runs it, with one addition.

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

The API holds every server's SSH private key (SSHServer blocks), every app's secrets, and
whoever may create a deployment runs code on the workers. So the server listens beyond loopback
(127.0.0.0/8, ::1, localhost) only with Prefect's own authentication,
`PREFECT_SERVER_API_AUTH_STRING` (clients and workers send the same value as
`PREFECT_API_AUTH_STRING`): without it `main` refuses before binding. And unless they are set
explicitly, Prefect's CSRF protection is on and cross-origin requests are allowed from the
server's own UI origin only (Prefect's defaults: CSRF off, every origin), so a web page in a
browser that can reach the server cannot drive it. A request without the auth string is not
buffered or retried here: Prefect answers it 401 (or 403 without a CSRF token).

    python -m deploy_runs.server --host 127.0.0.1 --port 4200
    PREFECT_SERVER_API_AUTH_STRING='admin:LONG-RANDOM' python -m deploy_runs.server --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

from deploy_runs.api import waits as doubling_waits
from deploy_runs.errors import DeployRunsError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATIENCE = 5.0
FIRST_WAIT, LONGEST_WAIT = 0.01, 0.25
BUSY_BODY = {"exception_message": "Service Unavailable"}  # Prefect's retryable-error answer
_log = logging.getLogger("deploy_runs.server")


def waits(patience: float = PATIENCE) -> list[float]:
    """Pauses between attempts: doubling from FIRST_WAIT to LONGEST_WAIT, `patience` in all."""
    return doubling_waits(patience, FIRST_WAIT, LONGEST_WAIT)


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


# Who may use the API ---------------------------------------------------------------------------

SERVER_AUTH_SETTING = "PREFECT_SERVER_API_AUTH_STRING"  # the server's (Prefect's ServerAPISettings)
CLIENT_AUTH_SETTING = "PREFECT_API_AUTH_STRING"  # clients' and workers' (Prefect's APISettings)
CSRF_SETTING = "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"
CORS_SETTING = "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class UnprotectedAPI(DeployRunsError):
    """A server asked to listen beyond loopback without an API auth string."""


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: an address in 127.0.0.0/8, ::1 (also
    as ::ffff:127.x.y.z), or the name localhost. Any other name may resolve to anything."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def check_bind(host: str, auth_string: str | None) -> None:
    """Refuse (UnprotectedAPI) to serve the API on `host` beyond loopback without an auth
    string: anyone who reached it could read every server's SSH key and every app's secrets,
    and run code on the workers by creating a deployment."""
    if auth_string or is_loopback(host):
        return
    raise UnprotectedAPI(
        f"refusing to serve the Prefect API on {host or '(all addresses)'} without "
        "authentication: anyone who reaches it could read every server's SSH key and every "
        f"app's secrets, and run code on the workers. Set {SERVER_AUTH_SETTING}=USER:PASSWORD "
        f"(a long random password) for the server and {CLIENT_AUTH_SETTING}, the same value, "
        "wherever a worker, the CLI or the Python API runs, with TLS in front of the API; "
        "or listen on 127.0.0.1.")


def configured_auth_string(side: Literal["server", "client"]) -> str | None:
    """The API auth string in Prefect's settings here (environment, profile, pyproject.toml):
    the server's (`PREFECT_SERVER_API_AUTH_STRING`) or the clients' (`PREFECT_API_AUTH_STRING`).
    None when unset or empty."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    secret = settings.server.api.auth_string if side == "server" else settings.api.auth_string
    return (secret.get_secret_value() or None) if secret is not None else None


def basic_authorization(auth_string: str) -> bytes:
    """The Authorization header Prefect's client sends for `auth_string` (HTTP Basic)."""
    return b"Basic " + base64.b64encode(auth_string.encode())


def _origin(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    if not (parts.scheme and parts.netloc):
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


def own_origins(host: str, port: int) -> list[str]:
    """The origins the server's own UI is opened from: the URLs Prefect's settings give for the
    UI and for the UI's API (PREFECT_UI_URL, PREFECT_UI_API_URL, or both from PREFECT_API_URL;
    not Prefect's guess from its default port), and the address it listens on (127.0.0.1 and
    localhost for loopback and all addresses)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui = settings.server.ui
    given = "api_url" in ui.model_fields_set or settings.api.url
    if is_loopback(host) or host in WILDCARD_HOSTS:
        listening = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    else:
        name = host.strip().removeprefix("[").removesuffix("]")
        listening = [f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"]
    origins = [_origin(settings.ui_url), _origin(ui.api_url) if given else None, *listening]
    return list(dict.fromkeys(o for o in origins if o))


def protect_from_browsers(host: str, port: int) -> dict[str, str]:
    """Prefect's CSRF protection on, and cross-origin requests from the server's own origins
    only, unless set explicitly (environment, profile): set in this process's environment and
    Prefect's process-wide settings (every thread and task of the server sees the same, as
    Prefect's app cache needs). Returns what was set."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    explicit = get_current_settings().server.api.model_fields_set
    chosen = {}
    if "csrf_protection_enabled" not in explicit:
        chosen[CSRF_SETTING] = "true"
    if "cors_allowed_origins" not in explicit:
        chosen[CORS_SETTING] = ",".join(own_origins(host, port))
    if chosen:
        os.environ.update(chosen)
        refresh_global_settings_context()
    return chosen


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
    """An error of a database that does not answer (stopped, restarting), by Prefect's rule of
    errors its clients may retry (with `database_away_is_retryable`); not a busy SQLite store
    (RetryWhenBusy's)."""
    from prefect.server.api.server import is_client_retryable_exception

    return isinstance(exc, Exception) and not is_sqlite_busy(exc) and \
        is_client_retryable_exception(exc)


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


def create_app() -> ASGIApp:
    """Prefect's server app (API, UI, services), as `prefect server start` creates it; on
    SQLite with the database configuration of `sqlite_configuration`; a database that does
    not answer is a 503 (`database_away_is_retryable`)."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.server.database.dependencies import set_database_config
    from prefect.server.utilities.database import get_dialect
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name == "sqlite":
        set_database_config(sqlite_configuration(url))
    database_away_is_retryable()
    return RetryWhenBusy(AnswerDatabaseAway(prefect_app(final=True)),
                         auth_string=configured_auth_string("server"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy_runs.server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    try:
        check_bind(args.host, configured_auth_string("server"))
    except UnprotectedAPI as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    protect_from_browsers(args.host, args.port)

    import uvicorn
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    # as Prefect 3.9's `prefect server start` runs one server process; its loop="auto" and
    # http="auto" (uvicorn's defaults) pick uvloop and httptools, installed with deploy-runs:
    # ~50 ms less server CPU per deploy run (measured, bench/redeploy.py's no-change run)
    uvicorn.run(create_app(), host=args.host, port=args.port,
                timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
                ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
                ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
                log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


if __name__ == "__main__":
    main()
