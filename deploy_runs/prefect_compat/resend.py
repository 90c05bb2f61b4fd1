"""Writes to the Prefect API that are sent again at once when the SQLite store is busy.

On SQLite, Prefect's server answers 503 when a write transaction that began by reading finds
that another writer committed in between (SQLITE_BUSY: no busy timeout waits that out); it
rolled the request back, so sending it again is safe. Prefect's client waits 2 s before it
does (its back-off, 2**attempt, as the server sends no Retry-After) - most of a no-change
redeploy, measured on almost every run (`bench/redeploy.py`). Label updates are such
read-then-write transactions, and a run writes its facts as labels; those, and the request
for the app's concurrency slot, are sent again after 20 ms, 40 ms, ... up to `PATIENCE`
seconds. Any other answer is read as Prefect's client reads it (an error raises); a store
that stays busy, a server that asks for a CSRF token, or a connection that breaks (reset,
closed; seen once in 20 deploys at once, a run failed "ReadError: Connection reset by peer")
is left to Prefect's own client (its retries, its token). The async twins serve the Python
API: a deploy request's flow run (created with an idempotency key) and the run controls'
(Pause/Resume/Stop) labels.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any
from uuid import UUID

import httpx
from prefect.client.base import PrefectResponse
from prefect.client.orchestration import PrefectClient, SyncPrefectClient

PATIENCE = 5.0
FIRST_WAIT, LONGEST_WAIT = 0.02, 0.25


def waits(patience: float = PATIENCE, first: float = FIRST_WAIT,
          longest: float = LONGEST_WAIT) -> list[float]:
    """Pauses between attempts: doubling from `first` to `longest`, `patience` in all."""
    out, wait = [], first
    while sum(out) + wait <= patience:
        out.append(wait)
        wait = min(wait * 2, longest)
    return out


def send(client: SyncPrefectClient, method: str, path: str, body: Any,
         patience: float = PATIENCE) -> httpx.Response | None:
    """Send a request whose server side rolls back on a busy store, again at once while the
    answer is 503. None when the store stays busy or this client cannot send directly: the
    caller then uses Prefect's own client method."""
    http = getattr(client, "_client", None)  # Prefect's httpx client (its send retries)
    if not isinstance(http, httpx.Client):
        return None
    for wait in [*waits(patience), None]:
        # httpx's own send: one attempt, without Prefect's retry loop
        built = http.build_request(method, path, json=body)
        if getattr(http, "enable_csrf_support", False):
            try:
                http._add_csrf_headers(built)  # type: ignore[attr-defined] - see _answer
            except Exception:  # no token to be had: Prefect's client deals with that
                return None
        try:
            response = httpx.Client.send(http, built)
        except httpx.TransportError:
            # a connection reset or closed under us (a busy server, a restart): Prefect's
            # client sends it again with its own retries, as it does its own requests
            return None
        if response.status_code != 503:
            return _answer(response)
        if wait is not None:
            time.sleep(wait * random.uniform(0.8, 1.2))
    return None


def _answer(response: httpx.Response) -> httpx.Response | None:
    """A settled answer; None when the server refused the CSRF token, left to Prefect's client.

    A direct send carries the CSRF token of Prefect's own client, got and renewed by the
    client's `_add_csrf_headers` (Prefect 3's httpx clients, sync and async; deploy-runs' local
    server has CSRF protection on): without it every direct send to such a server was refused
    (403) and sent again by Prefect's client, ~2 ms more per label write, measured."""
    return None if response.status_code == 403 and b"CSRF" in response.content else response


def request(client: SyncPrefectClient, method: str, path: str, body: Any) -> httpx.Response:
    """`send`, answered like Prefect's own `client.request`: an error status raises
    PrefectHTTPStatusError, and a store that stays busy is left to Prefect's retries."""
    response = send(client, method, path, body)
    if response is None:
        return client.request(method, path, json=body)  # type: ignore[arg-type] - a route
    return PrefectResponse.from_httpx_response(response).raise_for_status()


def write_labels(client: SyncPrefectClient, run_id: UUID, labels: dict[str, Any]) -> None:
    """Merge `labels` into the flow run's labels (Prefect's `update_flow_run_labels`)."""
    request(client, "PATCH", f"/flow_runs/{run_id}/labels", labels)


# The same for Prefect's async client (the run controls of AsyncDeployRuns) ---------------------

async def asend(client: PrefectClient, method: str, path: str, body: Any,
                patience: float = PATIENCE) -> httpx.Response | None:
    """`send` with Prefect's async client."""
    http = getattr(client, "_client", None)
    if not isinstance(http, httpx.AsyncClient):
        return None
    for wait in [*waits(patience), None]:
        built = http.build_request(method, path, json=body)
        if getattr(http, "enable_csrf_support", False):
            try:
                await http._add_csrf_headers(built)  # type: ignore[attr-defined] - see _answer
            except Exception:  # no token to be had: Prefect's client deals with that
                return None
        try:
            response = await httpx.AsyncClient.send(http, built)
        except httpx.TransportError:  # as in `send`
            return None
        if response.status_code != 503:
            return _answer(response)
        if wait is not None:
            await asyncio.sleep(wait * random.uniform(0.8, 1.2))
    return None


async def arequest(client: PrefectClient, method: str, path: str, body: Any) -> httpx.Response:
    """`request` with Prefect's async client."""
    response = await asend(client, method, path, body)
    if response is None:
        return await client.request(method, path, json=body)  # type: ignore[arg-type]
    return PrefectResponse.from_httpx_response(response).raise_for_status()


async def awrite_labels(client: PrefectClient, run_id: UUID, labels: dict[str, Any]) -> None:
    """`write_labels` with Prefect's async client."""
    await arequest(client, "PATCH", f"/flow_runs/{run_id}/labels", labels)
