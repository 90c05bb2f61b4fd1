"""Deploy on push, for real: `deploy-runs webhooks serve`'s receiver under uvicorn on loopback,
real HTTP requests carrying each host's documented payload (tests/fixtures/webhooks) and
signature, against the real Prefect server and sandbox. A signed push deploys that commit
(trigger `push`); a wrong signature, a replayed delivery and another branch start nothing; a
burst of pushes deploys the newest commit; an oversized body is refused."""

from __future__ import annotations

import contextvars
import json
import socket
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn

from deploy_runs import RunStatus
from deploy_runs.webhooks import prefect_hooks, read_secret, receiver, sign, start_push_run

from .conftest import held, slow_build_files, wait_for

pytestmark = pytest.mark.timeout(420)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
EVENT = {"github": ("X-GitHub-Event", "push", "X-GitHub-Delivery"),
         "gitlab": ("X-Gitlab-Event", "Push Hook", "X-Gitlab-Event-UUID"),
         "gitea": ("X-Gitea-Event", "push", "X-Gitea-Delivery")}
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def hook_url(prefect_api):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(receiver(prefect_hooks, start_push_run, MAX_BODY),
                                           host="127.0.0.1", port=port, log_level="warning"))
    # in this thread's Prefect settings (the test server's API), as `webhooks serve` has them
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,),
                              daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the webhook receiver to listen")
    yield f"http://127.0.0.1:{port}/push"
    server.should_exit = True
    thread.join(timeout=10)


def post(url: str, host: str, app, commit: str, secret: str, branch: str = "main",
         delivery: str | None = None) -> httpx.Response:
    text = (FIXTURES / f"{host}-push.json").read_text()
    repository = app.application.repository  # the sandbox's git:// URL of the app
    for key, value in {"REPO_HTTP": repository, "REPO_SSH": repository, "REPO_GIT": repository,
                       "REPO_WEB": repository.removesuffix(".git"), "REF": f"refs/heads/{branch}",
                       "AFTER": commit}.items():
        text = text.replace("{" + key + "}", value)
    body = json.dumps(json.loads(text)).encode()
    event, kind, delivery_header = EVENT[host]
    headers = {"Content-Type": "application/json", event: kind,
               delivery_header: delivery or str(uuid.uuid4()), **sign(host, body, secret)}
    return httpx.post(url, content=body, headers=headers, timeout=60)


def push_runs(client, app) -> list:
    return [r for r in client.runs(app.name) if r.trigger == "push"]


def test_a_signed_push_deploys_that_commit_and_nothing_else_starts_a_run(client, make_app,
                                                                        hook_url):
    app = make_app("hello")
    secret = read_secret(app.name)
    commit = app.push({"site/index.html": "<h1>pushed</h1>\n"}, "pushed")

    answer = post(hook_url, "github", app, commit, secret, delivery="gh-1")
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["started"][0]["run"]
    run = client.wait(run_id, timeout=180)
    assert (run.status, run.commit, run.trigger) == (RunStatus.COMPLETED, commit, "push")

    refused = post(hook_url, "github", app, commit, "not-the-secret")
    assert refused.status_code == 401 and refused.json()["started"] == []
    replayed = post(hook_url, "github", app, commit, secret, delivery="gh-1")
    assert replayed.status_code == 200 and "handled before" in replayed.json()["message"]
    elsewhere = post(hook_url, "github", app, commit, secret, branch="feature")
    assert elsewhere.status_code == 202 and "no app deploys branch feature" in elsewhere.text
    big = httpx.post(hook_url, content=b"x" * (MAX_BODY + 1),
                     headers={"X-GitHub-Event": "push"}, timeout=60)
    assert big.status_code == 413
    assert [r.id for r in push_runs(client, app)] == [run.id]


def test_a_burst_of_pushes_from_each_host_deploys_the_newest_commit(client, make_app, hook_url):
    mark = f"b{uuid.uuid4().hex[:8]}"
    app = make_app("hello", files=slow_build_files(1, mark))
    secret = read_secret(app.name)
    holder = client.deploy(app.name)
    # the pushes arrive while a run holds the app's slot (its build held on the server), so
    # all three wait: the two older ones see a newer push and end, whatever order their
    # processes start in
    with held(mark):
        commits = [app.push({"site/index.html": f"<h1>push {i}</h1>\n"}, f"push {i}")
                   for i in range(3)]
        answers = [post(hook_url, host, app, commit, secret)
                   for host, commit in zip(("gitlab", "gitea", "github"), commits, strict=True)]
        assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
        ids = [a.json()["started"][0]["run"] for a in answers]
        wait_for(lambda: all(client.get_run(i).status is RunStatus.STOPPED for i in ids[:2]),
                 120, "the two older pushes to be replaced")
    runs = [client.wait(i, timeout=240) for i in ids]
    assert client.wait(holder.id, timeout=240).status is RunStatus.COMPLETED
    assert [r.ref for r in runs] == commits  # each run asked for its push's commit
    for earlier in runs[:-1]:  # replaced while waiting: their code never ran
        assert "Replaced by a newer run" in (earlier.message or ""), earlier
        assert all(s.started_at is None for s in earlier.steps), earlier
    assert (runs[-1].status, runs[-1].commit) == (RunStatus.COMPLETED, commits[-1])
    assert "push 2" in httpx.get(app.url(), timeout=5).text
