"""Writes sent again at once while the store is busy (503), against a small local HTTP server
that answers as Prefect's does when SQLite is busy."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient, SyncPrefectClient

from deploy_runs.prefect_compat.resend import (
    FIRST_WAIT,
    LONGEST_WAIT,
    asend,
    awrite_labels,
    send,
    waits,
    write_labels,
)


class Store:
    def __init__(self, busy_answers: int) -> None:
        self.busy_answers = busy_answers
        self.csrf = False  # answer as a server with CSRF protection does to a bare request
        self.csrf_tokens = False  # hand out CSRF tokens, and ask for them (Prefect's way)
        self.tokens_given = 0
        self.resets = 0  # requests answered by closing the connection
        self.requests: list[tuple[str, str, object]] = []
        self.url = ""


@pytest.fixture
def store() -> Iterator[Store]:
    state = Store(0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # Prefect's CSRF token endpoint: 422 while CSRF protection is off (the client then
            # stops asking), a token while it is on
            state.tokens_given += self.path.startswith("/api/csrf-token") and state.csrf_tokens
            if state.csrf_tokens:
                self.send_response(200)
                payload = json.dumps({"token": "t0k3n", "client": "c",
                                      "expiration": "2099-01-01T00:00:00Z"}).encode()
            else:
                self.send_response(422)
                payload = b'{"detail": "CSRF protection is disabled."}'
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(("PATCH", self.path, body))
            if state.resets:  # close the connection without an answer
                state.resets -= 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            busy = len(state.requests) <= state.busy_answers
            if state.csrf_tokens and self.headers.get("Prefect-Csrf-Token") != "t0k3n":
                self.send_response(403)
                payload = b'{"detail": "Invalid CSRF token."}'
            elif state.csrf:
                self.send_response(403)
                payload = b'{"detail": "Missing CSRF token."}'
            else:
                self.send_response(503 if busy else 204)
                payload = b'{"exception_message": "Service Unavailable"}' if busy else b""
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    yield state
    server.shutdown()
    server.server_close()


def test_waits_double_up_to_the_longest_and_stay_within_the_patience():
    assert waits(1.0)[:4] == [FIRST_WAIT, FIRST_WAIT * 2, FIRST_WAIT * 4, FIRST_WAIT * 8]
    assert max(waits()) == LONGEST_WAIT
    assert sum(waits(1.0)) <= 1.0 and sum(waits(1.0)) + LONGEST_WAIT > 1.0


def test_a_busy_store_gets_the_request_again_until_it_is_taken(store):
    store.busy_answers = 3
    client = SyncPrefectClient(store.url)
    run_id = uuid4()
    response = send(client, "PATCH", f"/flow_runs/{run_id}/labels", {"a": "1"})
    assert response is not None and response.status_code == 204
    assert [r[1] for r in store.requests] == [f"/api/flow_runs/{run_id}/labels"] * 4
    assert all(r[2] == {"a": "1"} for r in store.requests)


def test_a_store_that_stays_busy_is_left_to_prefects_client(store):
    store.busy_answers = 10**6
    client = SyncPrefectClient(store.url)
    assert send(client, "PATCH", "/flow_runs/x/labels", {}, patience=0.1) is None
    assert len(store.requests) == len(waits(0.1)) + 1


def test_write_labels_sends_each_label_once_when_the_store_is_free(store):
    client = SyncPrefectClient(store.url)
    run_id = uuid4()
    write_labels(client, run_id, {"deploy-runs.commit": "abc"})
    assert store.requests == [("PATCH", f"/api/flow_runs/{run_id}/labels",
                               {"deploy-runs.commit": "abc"})]


async def _async_writes(url: str, run_id) -> None:
    async with PrefectClient(url) as client:
        await awrite_labels(client, run_id, {"deploy-runs.control": "stop"})


def test_the_async_client_also_sends_again_at_once_while_the_store_is_busy(store):
    import asyncio

    store.busy_answers = 2
    run_id = uuid4()
    asyncio.run(_async_writes(store.url, run_id))
    assert store.requests == [("PATCH", f"/api/flow_runs/{run_id}/labels",
                               {"deploy-runs.control": "stop"})] * 3


def test_the_async_client_leaves_a_store_that_stays_busy_to_prefect(store):
    import asyncio

    async def attempt():
        async with PrefectClient(store.url) as client:
            return await asend(client, "PATCH", "/flow_runs/x/labels", {}, patience=0.1)

    store.busy_answers = 10**6
    assert asyncio.run(attempt()) is None
    assert len(store.requests) == len(waits(0.1)) + 1


def test_a_server_asking_for_a_csrf_token_is_left_to_prefects_client(store):
    import asyncio

    async def attempt():
        async with PrefectClient(store.url) as client:
            return await asend(client, "PATCH", "/flow_runs/x/labels", {})

    store.csrf = True
    assert send(SyncPrefectClient(store.url), "PATCH", "/flow_runs/x/labels", {}) is None
    assert asyncio.run(attempt()) is None
    assert len(store.requests) == 2  # one attempt each, no busy-store retries


def test_a_direct_send_to_a_server_with_csrf_protection_carries_prefects_token(store):
    # deploy-runs' local server has CSRF protection on: the direct send gets the token as
    # Prefect's client does (once), instead of being refused and sent again by the client
    import asyncio

    store.csrf_tokens = True
    store.busy_answers = 1
    client = SyncPrefectClient(store.url)  # CSRF support is on by default (a setting)
    response = send(client, "PATCH", "/flow_runs/x/labels", {"a": "1"})
    assert response is not None and response.status_code == 204
    assert len(store.requests) == 2 and store.tokens_given == 1  # busy once, then taken

    async def attempt():
        async with PrefectClient(store.url) as client:
            return await asend(client, "PATCH", "/flow_runs/x/labels", {})

    assert asyncio.run(attempt()).status_code == 204


def test_a_connection_broken_under_a_direct_send_is_left_to_prefects_client(store):
    store.resets = 1
    run_id = uuid4()
    with SyncPrefectClient(store.url) as client:
        assert send(client, "PATCH", f"/flow_runs/{run_id}/labels", {"a": "1"}) is None
        store.resets = 1
        write_labels(client, run_id, {"a": "1"})  # Prefect's client sends it again
    assert [r[0] for r in store.requests] == ["PATCH"] * 3
    assert store.requests[-1][2] == {"a": "1"}


def test_the_async_direct_send_also_leaves_a_broken_connection_to_prefect(store):
    import asyncio

    store.resets = 1
    run_id = uuid4()

    async def go() -> None:
        async with PrefectClient(store.url) as client:
            assert await asend(client, "PATCH", f"/flow_runs/{run_id}/labels", {"a": "1"}) is None
            store.resets = 1
            await awrite_labels(client, run_id, {"a": "1"})
    asyncio.run(go())
    assert [r[0] for r in store.requests] == ["PATCH"] * 3
