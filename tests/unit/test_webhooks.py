"""Push webhooks (deploy_runs/webhooks.py), pure parts: each host's signature, its payload
(the documented shapes: tests/fixtures/webhooks), repository matching, and what a request
starts or why it starts nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from deploy_runs.webhooks import (
    Deliveries,
    Hook,
    handle,
    parse_push,
    repository_key,
    sender,
    sign,
    signature_valid,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
COMMIT = "1f2e3d4c5b6a79880123456789abcdef01234567"
REPO = {"REPO_HTTP": "https://git.example.com/shop/web.git",
        "REPO_SSH": "git@git.example.com:shop/web.git",
        "REPO_GIT": "git://git.example.com/shop/web.git",
        "REPO_WEB": "https://git.example.com/shop/web"}
EVENTS = {"github": {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"},
          "gitlab": {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "d-1"},
          "gitea": {"X-Gitea-Event": "push", "X-Gitea-Delivery": "d-1",
                    "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"}}  # Gitea sends both


def payload(host: str, ref: str = "refs/heads/main", after: str = COMMIT, **repo: str) -> bytes:
    text = (FIXTURES / f"{host}-push.json").read_text()
    for key, value in {**REPO, **repo, "REF": ref, "AFTER": after}.items():
        text = text.replace("{" + key + "}", value)
    return json.dumps(json.loads(text)).encode()


def headers(host: str, body: bytes, secret: str = "s3cret", **more: str) -> dict[str, str]:
    return {k.lower(): v for k, v in {**EVENTS[host], **sign(host, body, secret), **more}.items()}


@pytest.mark.parametrize("host", ["github", "gitlab", "gitea"])
def test_each_hosts_push_is_read_and_its_signature_checked(host):
    body = payload(host)
    sent = headers(host, body)
    assert sender(sent)[0] == host
    push = parse_push(host, sent, json.loads(body))
    assert (push.branch, push.commit, push.delivery) == ("main", COMMIT, "d-1")
    assert repository_key(REPO["REPO_HTTP"]) in {repository_key(u) for u in push.repositories}
    assert signature_valid(host, sent, body, "s3cret")
    assert not signature_valid(host, sent, body, "other")
    assert not signature_valid(host, sent, body + b" ", "s3cret") or host == "gitlab"
    assert not signature_valid(host, {k: v for k, v in sent.items()
                                      if "signature" not in k and "token" not in k}, body, "s3cret")


def test_forgejos_own_signature_is_the_one_checked():
    body = payload("gitea")
    good = sign("gitea", body, "s3cret")["X-Gitea-Signature"]
    sent = {"x-forgejo-event": "push", "x-forgejo-signature": "0" * 64, "x-gitea-signature": good}
    assert not signature_valid("gitea", sent, body, "s3cret")
    assert signature_valid("gitea", {**sent, "x-forgejo-signature": good}, body, "s3cret")


def test_repository_urls_of_one_repository_are_one():
    same = ["https://git.example.com/Shop/Web.git", "git@git.example.com:shop/web.git",
            "ssh://git@git.example.com:2222/shop/web", "git://git.example.com/shop/web.git/",
            "http://user:pw@git.example.com/shop/web"]
    assert len({repository_key(u) for u in same}) == 1
    assert repository_key("https://git.example.com/shop/api.git") != repository_key(same[0])
    assert repository_key("https://other.example.com/shop/web.git") != repository_key(same[0])


def test_a_deleted_branch_or_a_tag_is_no_commit_to_deploy():
    deleted = json.loads(payload("github", after="0" * 40))
    deleted["deleted"] = True
    assert parse_push("github", {}, deleted).commit is None
    assert parse_push("gitlab", {}, json.loads(payload("gitlab", ref="refs/tags/v1"))).branch is None


class Started:
    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []

    async def __call__(self, app: str, commit: str) -> str:
        self.runs.append((app, commit))
        return f"run-{len(self.runs)}"


def run(sent: dict[str, str], body: bytes, hooks: list[Hook], started: Started,
        deliveries: Deliveries | None = None):
    async def listed() -> list[Hook]:
        return hooks

    return asyncio.run(handle(sent, body, listed, started, deliveries or Deliveries()))


HOOKS = [Hook("web", REPO["REPO_SSH"], "main", "s3cret"),
         Hook("web-staging", REPO["REPO_HTTP"], "staging", "s3cret"),
         Hook("other", "https://git.example.com/shop/api.git", "main", "another")]


def test_a_signed_push_starts_the_apps_of_its_branch_once():
    body, started, seen = payload("github"), Started(), Deliveries()
    outcome = run(headers("github", body), body, HOOKS, started, seen)
    assert (outcome.status, started.runs) == (202, [("web", COMMIT)])
    assert outcome.started == [{"app": "web", "run": "run-1"}]
    again = run(headers("github", body), body, HOOKS, started, seen)
    assert again.status == 200 and "handled before" in again.message and len(started.runs) == 1


@pytest.mark.parametrize("host", ["github", "gitlab", "gitea"])
def test_what_starts_nothing(host):
    body, started = payload(host), Started()
    assert run(headers(host, body, "wrong"), body, HOOKS, started).status == 401
    unsigned = {k: v for k, v in headers(host, body).items()
                if "signature" not in k and "token" not in k}
    assert run(unsigned, body, HOOKS, started).status == 401
    other_branch = payload(host, ref="refs/heads/feature")
    outcome = run(headers(host, other_branch), other_branch, HOOKS, started)
    assert outcome.status == 202 and "no app deploys branch feature" in outcome.message
    unknown = payload(host, REPO_HTTP="https://elsewhere.example.com/x/y.git",
                      REPO_SSH="git@elsewhere.example.com:x/y.git",
                      REPO_GIT="git://elsewhere.example.com/x/y.git",
                      REPO_WEB="https://elsewhere.example.com/x/y")
    outcome = run(headers(host, unknown), unknown, HOOKS, started)
    assert outcome.status == 202 and outcome.message.startswith("no app deploys")
    assert run({"x-github-event": "push"}, b"[1, 2]", HOOKS, started).status == 400
    assert run({}, body, HOOKS, started).status == 400
    assert started.runs == []


def test_an_app_without_a_secret_takes_no_push():
    body, started = payload("github"), Started()
    hooks = [Hook("web", REPO["REPO_SSH"], "main", None)]
    assert run(headers("github", body), body, hooks, started).status == 401
    assert started.runs == []


def test_a_ping_is_answered_and_starts_nothing():
    body, started = payload("github"), Started()
    sent = {**headers("github", body), "x-github-event": "ping"}
    outcome = run(sent, body, HOOKS, started)
    assert outcome.status == 200 and "not a push" in outcome.message and started.runs == []
