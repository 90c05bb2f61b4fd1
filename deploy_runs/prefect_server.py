"""The Prefect server deploy-runs starts for itself (`prefect_local.start_server`): Prefect's own
server app, run by uvicorn as `prefect server start` runs it, with the seam's server-side workarounds
(`deploy_runs.prefect_compat.server_app`: SQLite writes begun IMMEDIATE, a database that does
not answer answered 503).

The API holds every server's SSH private key (SSHServer blocks), every app's secrets, and
whoever may create a deployment runs code on the workers. So the server listens beyond loopback
(127.0.0.0/8, ::1, localhost) only with Prefect's own authentication,
`PREFECT_SERVER_API_AUTH_STRING` (clients and workers send the same value as
`PREFECT_API_AUTH_STRING`): without it `main` refuses before binding. And unless they are set
explicitly, Prefect's CSRF protection is on and cross-origin requests are allowed from the
server's own UI origin only (Prefect's defaults: CSRF off, every origin), so a web page in a
browser that can reach the server cannot drive it. Prefect answers a request without the auth
string 401 (or 403 without a CSRF token).

    python -m deploy_runs.prefect_server --host 127.0.0.1 --port 4200
    PREFECT_SERVER_API_AUTH_STRING='admin:LONG-RANDOM' python -m deploy_runs.prefect_server --host 0.0.0.0

"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
from typing import Literal
from urllib.parse import urlsplit

from deploy_runs.errors import DeployRunsError
from deploy_runs.prefect_compat.busy_sqlite import ASGIApp

__all__ = ["basic_authorization", "check_bind", "configured_auth_string", "create_app", "is_loopback"]


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


def basic_authorization(auth_string: str) -> bytes:
    """The Authorization header Prefect's client sends for `auth_string` (HTTP Basic)."""
    return b"Basic " + base64.b64encode(auth_string.encode())


def configured_auth_string(side: Literal["server", "client"]) -> str | None:
    """The API auth string in Prefect's settings here (environment, profile, pyproject.toml):
    the server's (`PREFECT_SERVER_API_AUTH_STRING`) or the clients' (`PREFECT_API_AUTH_STRING`).
    None when unset or empty."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    secret = settings.server.api.auth_string if side == "server" else settings.api.auth_string
    return (secret.get_secret_value() or None) if secret is not None else None


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


def create_app() -> ASGIApp:
    """Prefect's server app with the seam's workarounds."""
    from deploy_runs.prefect_compat.server_app import server_app

    return server_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy_runs.prefect_server",
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
