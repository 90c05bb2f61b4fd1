"""Deploy on push: a receiver of push webhooks from GitHub, GitLab and Gitea/Forgejo.

`deploy-runs webhooks serve` runs `receiver()` (a Starlette app) under uvicorn, as the local
Prefect server is run. A push is verified against the secret of each app that deploys its
repository (a Prefect Secret block per app, `deploy-runs-webhook-APP`), mapped to the apps that
deploy its branch, and each starts a redeploy at the pushed commit (trigger `push`). Pushes in a
burst collapse to the newest commit: push runs take the `replace` policy whatever the app's
default (a waiting run ends Stopped when a newer one is requested).

How each host signs (checked in constant time over the exact bytes received):
- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`; event `X-GitHub-Event`,
  delivery id `X-GitHub-Delivery`;
- GitLab: `X-Gitlab-Token: <the secret itself>`; event `X-Gitlab-Event: Push Hook`, delivery
  id `X-Gitlab-Event-UUID` (or `Idempotency-Key`);
- Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature: <hex HMAC-SHA256 of the
  body>` (a Forgejo signature, when sent, is the one checked); event `X-Gitea-Event` /
  `X-Forgejo-Event`, delivery id `X-Gitea-Delivery` / `X-Forgejo-Delivery`. (Gitea also sends
  GitHub's event headers: its own are looked at first.)

Answers: 202 with the runs started; 401 for a missing or wrong signature (nothing started);
202 "no app deploys it" for a repository or branch no app deploys; 200 for a delivery already
handled (a replay) or an event that is not a push; 413 for a body over the size limit; 400 for
a body that is not a JSON object.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

SECRET_PREFIX = "deploy-runs-webhook-"
MAX_BODY_BYTES = 10 * 1024 * 1024  # GitHub caps a payload at 25 MB; a push is far smaller
REMEMBERED_DELIVERIES = 10_000
PATH = "/push"
NO_COMMIT = "0" * 40
Host = Literal["github", "gitlab", "gitea"]


def secret_name(app: str) -> str:
    """The Prefect Secret block holding `app`'s webhook secret."""
    return f"{SECRET_PREFIX}{app}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Push:
    """What a push event says, whoever sent it (pure data)."""

    host: Host
    delivery: str | None
    repositories: tuple[str, ...]  # the repository's URLs, as the host names them
    branch: str | None  # None: a tag or another kind of ref
    commit: str | None  # None: the branch was deleted


@dataclass(frozen=True)
class Hook:
    """An app as the receiver sees it."""

    app: str
    repository: str
    branch: str
    secret: str | None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name.lower())
    return value if value else None


def sender(headers: Mapping[str, str]) -> tuple[Host, str | None] | None:
    """(host, event name) by the request's headers (lowercase names); None: not a git host's
    webhook."""
    if event := _header(headers, "x-forgejo-event") or _header(headers, "x-gitea-event"):
        return "gitea", event
    if event := _header(headers, "x-gitlab-event"):
        return "gitlab", event
    if event := _header(headers, "x-github-event"):
        return "github", event
    return None


def is_push(host: Host, event: str | None) -> bool:
    return (event or "").lower() in (("push hook",) if host == "gitlab" else ("push",))


def delivery_id(host: Host, headers: Mapping[str, str]) -> str | None:
    names = {"github": ("x-github-delivery",),
             "gitlab": ("x-gitlab-event-uuid", "idempotency-key"),
             "gitea": ("x-forgejo-delivery", "x-gitea-delivery")}[host]
    return next((v for n in names if (v := _header(headers, n))), None)


def signature_valid(host: Host, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Whether the request carries `secret`'s signature (or, for GitLab, the secret)."""
    if not secret:
        return False
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if host == "github":
        given = _header(headers, "x-hub-signature-256") or ""
        return hmac.compare_digest(given.encode(), f"sha256={digest}".encode())
    if host == "gitlab":
        return hmac.compare_digest((_header(headers, "x-gitlab-token") or "").encode(),
                                   secret.encode())
    given = _header(headers, "x-forgejo-signature") or _header(headers, "x-gitea-signature") or ""
    return hmac.compare_digest(given.lower().encode(), digest.encode())


def sign(host: Host, body: bytes, secret: str) -> dict[str, str]:
    """The headers a host sends for `body` signed with `secret` (for tests and for a manual
    delivery with curl)."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"github": {"X-Hub-Signature-256": f"sha256={digest}"},
            "gitlab": {"X-Gitlab-Token": secret},
            "gitea": {"X-Gitea-Signature": digest}}[host]


def parse_push(host: Host, headers: Mapping[str, str], payload: Mapping[str, Any]) -> Push:
    """A push payload (GitHub's, GitLab's or Gitea's shape) -> Push."""
    ref = str(payload.get("ref") or "")
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    after = payload.get("checkout_sha") if host == "gitlab" else payload.get("after")
    after = after or payload.get("after")
    commit = str(after) if after and str(after) != NO_COMMIT and not payload.get("deleted") \
        else None
    urls: list[str] = []
    for key in ("repository", "project"):
        part = payload.get(key)
        if isinstance(part, Mapping):
            for name in ("clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url",
                         "git_ssh_url", "http_url", "web_url", "homepage"):
                value = part.get(name)
                if isinstance(value, str) and value:
                    urls.append(value)
    return Push(host, delivery_id(host, headers), tuple(dict.fromkeys(urls)), branch, commit)


_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>(?!//).+)$")


def repository_key(url: str) -> str:
    """A repository URL reduced to host/path, lowercase, without scheme, user, port, `.git` or
    trailing slash: `git@github.com:Org/App.git` and `https://github.com/org/app` are one."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    elif (match := _SCP_LIKE.match(url)) is not None:
        host, path = match["host"], match["path"]
    else:
        host, path = "", url
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host.lower()}/{path.lower()}"


@dataclass
class Outcome:
    """What the receiver answered (status, message) and what it started."""

    status: int
    message: str
    started: list[dict[str, str]] = field(default_factory=list)


class Deliveries:
    """Delivery ids already handled (the newest REMEMBERED_DELIVERIES): a replay is ignored."""

    def __init__(self, size: int = REMEMBERED_DELIVERIES) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def seen(self, key: str) -> bool:
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False


async def handle(headers: Mapping[str, str], body: bytes,
                 hooks: Callable[[], Awaitable[list[Hook]]],
                 start: Callable[[str, str], Awaitable[str]],
                 deliveries: Deliveries) -> Outcome:
    """One webhook request (headers by lowercase name): verify, map, start."""
    found = sender(headers)
    if found is None:
        return Outcome(400, "not a push webhook of GitHub, GitLab, Gitea or Forgejo")
    host, event = found
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return Outcome(400, "the body is not JSON")
    if not isinstance(payload, dict):
        return Outcome(400, "the body is not a JSON object")
    push = parse_push(host, headers, payload)
    keys = {repository_key(u) for u in push.repositories}
    of_repository = [h for h in await hooks() if repository_key(h.repository) in keys]
    if not of_repository:
        return Outcome(202, f"no app deploys {push.repositories[0] if push.repositories else 'it'}"
                            ": nothing started")
    signed = [h for h in of_repository
              if h.secret and signature_valid(host, headers, body, h.secret)]
    if not signed:
        return Outcome(401, "the signature does not match the webhook secret of any app that "
                            "deploys this repository: nothing started")
    if not is_push(host, event):
        return Outcome(200, f"ignored: {event} is not a push event")
    if push.delivery and deliveries.seen(f"{host}:{push.delivery}"):
        return Outcome(200, f"delivery {push.delivery} was handled before: ignored")
    if push.branch is None or push.commit is None:
        return Outcome(202, "not a new commit on a branch (a tag, or a deleted branch): "
                            "nothing started")
    wanted = [h for h in signed if h.branch == push.branch]
    if not wanted:
        return Outcome(202, f"no app deploys branch {push.branch} of this repository: "
                            "nothing started")
    started = [{"app": h.app, "run": await start(h.app, push.commit)} for h in wanted]
    return Outcome(202, f"started {len(started)} run(s) at {push.commit[:12]}", started)


def receiver(hooks: Callable[[], Awaitable[list[Hook]]],
             start: Callable[[str, str], Awaitable[str]],
             max_body: int = MAX_BODY_BYTES) -> Any:
    """The ASGI app: POST /push (any other path or method: 404/405)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    deliveries = Deliveries()

    async def push(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            return JSONResponse({"message": f"body over {max_body} bytes"}, status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return JSONResponse({"message": f"body over {max_body} bytes"}, status_code=413)
            chunks.append(chunk)
        headers = {k.lower(): v for k, v in request.headers.items()}
        outcome = await handle(headers, b"".join(chunks), hooks, start, deliveries)
        return JSONResponse({"message": outcome.message, "started": outcome.started},
                            status_code=outcome.status)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"message": "ok"})

    return Starlette(routes=[Route(PATH, push, methods=["POST"]),
                             Route("/health", health, methods=["GET"])])


# Prefect's side: the apps, their secrets, the runs -----------------------------------------------

async def prefect_hooks() -> list[Hook]:
    """Every application saved in Prefect, with its webhook secret (None: none set)."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from blocks import Application

    async with get_client() as client:
        documents = await client.read_block_documents_by_type(
            Application.get_block_type_slug(), include_secrets=False)
    hooks = []
    for document in documents:
        data = document.data or {}
        if not document.name or not data.get("repository"):
            continue
        try:
            secret = (await Secret.aload(secret_name(document.name))).get()
        except ValueError:  # no secret saved for this app: its pushes are refused
            secret = None
        hooks.append(Hook(document.name, str(data["repository"]),
                          str(data.get("branch") or "main"), str(secret) if secret else None))
    return hooks


async def start_push_run(app: str, commit: str) -> str:
    """A redeploy of `app` at `commit`, trigger `push`, policy `replace`; its run id."""
    from deploy_runs.client import AsyncDeployRuns

    run = await AsyncDeployRuns().deploy(app, commit, _trigger="push", _concurrency="replace")
    return str(run.id)


def ensure_secret(app: str) -> tuple[str, bool]:
    """The app's webhook secret block, made with a new random secret if there is none:
    (block name, whether it was made now)."""
    from prefect.blocks.system import Secret

    name = secret_name(app)
    try:
        Secret.load(name)
        return name, False
    except ValueError:
        Secret(value=new_secret()).save(name)
        return name, True


def read_secret(app: str, rotate: bool = False) -> str:
    """The app's webhook secret (a new one first, with `rotate`)."""
    from prefect.blocks.system import Secret

    name = secret_name(app)
    if rotate:
        Secret(value=new_secret()).save(name, overwrite=True)
    else:
        ensure_secret(app)
    return str(Secret.load(name).get())
