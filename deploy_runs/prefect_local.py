"""The embedded default Prefect: a local server on SQLite and a process worker for the
`deploy-runs` work pool, started in the background with PID files and stopped by PID.

The settings deploy-runs relies on (fast worker polling, short log batching, log streaming)
are set here, so the worker, the demo and the tests get them without anyone exporting them.

An API auth string (Prefect's HTTP Basic authentication), given or in Prefect's settings as
PREFECT_SERVER_API_AUTH_STRING or PREFECT_API_AUTH_STRING, goes to the server as the first and
to the workers as the second, so everything started here works with it. A server listens
beyond loopback only with one (deploy_runs/prefect_server.py, `check_bind`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from deploy_runs.heartbeat import HEARTBEAT_ENV

DEFAULT_PORT = 4200
T = TypeVar("T")

SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Log readers page through long logs 1,000 records at a time (Prefect's default is 200).
    "PREFECT_SERVER_API_DEFAULT_LIMIT": "1000",
}
# Where the server keeps concurrency leases (each run's hold on its application's slot).
# Prefect's default keeps them in memory: a server restart forgets them while the slots stay
# counted in the database, and every later run of those applications waits for good. On disk
# (under the server's PREFECT_HOME) they survive a restart, a kill included; with Redis they
# are shared by servers on several machines.
FILE_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
REDIS_LEASES = "prefect_redis.lease_storage"
LEASE_STORAGE_SETTING = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FLOW_SETTINGS = {
    # Logs reach the API within ~0.1 s instead of the 2 s default.
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.1",
    # The worker looks for new runs 4 times a second instead of every 10 s (a run waited
    # 0.7-0.8 s in Scheduled with 1 s, measured; a poll is one small request).
    "PREFECT_WORKER_QUERY_SECONDS": "0.25",
    # Runs send a heartbeat every 30 s (the minimum; default 180): a run whose process died
    # is then marked Crashed within about 90 s (deploy_runs/heartbeat.py).
    **HEARTBEAT_ENV,
}


def home() -> Path:
    path = Path(os.environ.get("DEPLOY_RUNS_HOME", Path.home() / ".deploy-runs")) / "prefect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The API URL by which this machine reaches a server listening on `host` (on all
    addresses: by loopback)."""
    name = host.strip().removeprefix("[").removesuffix("]")
    name = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(name.lower(), name)
    if name.lower().rstrip(".") == "localhost":
        name = "127.0.0.1"
    return f"http://[{name}]:{port}/api" if ":" in name else f"http://{name}:{port}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # A child that exited but was not reaped yet is not alive.
    return None if stat.rsplit(")", 1)[-1].split()[0] == "Z" else pid


def _start(name: str, argv: list[str], env: dict[str, str], state: Path) -> int:
    log = open(state / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (state / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _wait_ready(ready: Callable[[], T | None], what: str, name: str, state: Path,
                timeout: float, interval: float) -> T:
    """What `ready()` returns once it is something, while the process started as `name` lives;
    RuntimeError when it exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ready()
        if answer:
            return answer
        if _alive(state / f"{name}.pid") is None:
            raise RuntimeError(f"{what} exited; see {state / f'{name}.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:g}s")
        time.sleep(interval)


def _postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`; "
                           "`python -m deploy_runs.sandbox install` installs it)")
    return versions[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: its programs run as the package's `postgres` user
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def postgres_data_dir(state: Path) -> Path:
    """Where the cluster of `state` keeps its data: under `state`, or - as root, whose
    directories the `postgres` user may not enter - under /var/lib/deploy-runs."""
    if os.geteuid() != 0:
        return state / "postgres"
    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/deploy-runs/postgres") / digest


def drop_postgres(state: Path) -> None:
    """Delete the (stopped) cluster's data."""
    shutil.rmtree(postgres_data_dir(state), ignore_errors=True)


def start_postgres(state: Path, port: int, timeout: float = 60.0) -> str:
    """A PostgreSQL cluster of its own (Debian's packages; data in postgres_data_dir),
    listening on 127.0.0.1:`port` only, trust authentication (loopback, tests and
    benchmarks), with a database `prefect`. Returns the database URL for Prefect's server
    (`PREFECT_API_DATABASE_CONNECTION_URL`)."""
    bindir = _postgres_bin()
    data = postgres_data_dir(state)
    url = f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    if _alive(state / "postgres.pid"):
        return url
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        made = subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data),
                                            "-U", "prefect", "--auth=trust", "-E", "UTF8",
                                            "--no-sync"]),
                              capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {(made.stderr or made.stdout).strip()}")
    _start("postgres", _as_postgres([
        str(bindir / "postgres"), "-D", str(data), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
        "-c", "max_connections=200", "-c", "fsync=off"]), dict(os.environ), state)
    def ask() -> subprocess.CompletedProcess[str] | None:
        done = subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port),
                               "-U", "prefect", "-d", "postgres", "-tAc",
                               "SELECT 1 FROM pg_database WHERE datname = 'prefect'"],
                              capture_output=True, text=True, timeout=30)
        return done if done.returncode == 0 else None

    ready = _wait_ready(ask, "PostgreSQL", "postgres", state, timeout, 0.3)
    if ready.stdout.strip() != "1":
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "prefect", "prefect"], check=True, capture_output=True, timeout=60)
    return url


def start_redis(state: Path, port: int, timeout: float = 30.0) -> str:
    """A Redis server of its own (Debian's `redis-server`; data under `state`), listening on
    127.0.0.1:`port` only, saving its data on every write (leases are few and must survive a
    restart). Returns its URL for start_server(redis_url=...)."""
    url = f"redis://127.0.0.1:{port}/0"
    if _alive(state / "redis.pid"):
        return url
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("Redis is not installed (Debian package `redis-server`; "
                           "`python -m deploy_runs.sandbox install` installs it)")
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    _start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                     "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                     "--protected-mode", "yes", "--daemonize", "no"], dict(os.environ), state)
    def ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait_ready(ping, "Redis", "redis", state, timeout, 0.1)
    return url


def sqlite_database(state: Path) -> Path:
    """Where a server started by start_server with `state` keeps its SQLite database (the
    default of its PREFECT_HOME, `state`/home)."""
    return state / "home" / "prefect.db"


def start_server(port: int = DEFAULT_PORT, state: Path | None = None,
                 timeout: float = 90.0, database_url: str | None = None,
                 host: str = "127.0.0.1", auth_string: str | None = None,
                 redis_url: str | None = None) -> str:
    """Start a local Prefect server unless one already answers there; return its API URL.
    `database_url`: e.g. from start_postgres (default: SQLite under `state`). `host`: where it
    listens; beyond loopback only with an auth string (`auth_string`, else Prefect's settings
    PREFECT_SERVER_API_AUTH_STRING or PREFECT_API_AUTH_STRING): UnprotectedAPI otherwise.
    Concurrency leases are kept on disk under `state`, or in Redis at `redis_url` (e.g. from
    start_redis; Prefect's `prefect-redis`), unless PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE
    says otherwise."""
    from deploy_runs.prefect_server import check_bind, configured_auth_string, is_loopback

    auth_string = (auth_string or configured_auth_string("server")
                   or configured_auth_string("client"))
    check_bind(host, auth_string)
    state = state or home()
    url = api_url(port, host)
    if healthy(url):
        return url
    # the UI asks the server where the API is: without this it answers port 4200 (a server
    # reached from other machines keeps the PREFECT_UI_API_URL it is given)
    ui_api_url = url if is_loopback(host) else os.environ.get("PREFECT_UI_API_URL", url)
    env = {**os.environ, **SERVER_SETTINGS, "PREFECT_HOME": str(sqlite_database(state).parent),
           "PREFECT_UI_API_URL": ui_api_url}
    if redis_url:
        env.update({LEASE_STORAGE_SETTING: REDIS_LEASES, "PREFECT_REDIS_MESSAGING_URL": redis_url})
    else:
        env.setdefault(LEASE_STORAGE_SETTING, FILE_LEASES)
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.pop("PREFECT_API_URL", None)
    # links to runs in notifications (deploy_runs/notify.py) point at this server's UI
    env.setdefault("PREFECT_UI_URL", ui_api_url.removesuffix("/api"))
    # Prefect's server, with busy SQLite writes retried in the server, CSRF protection on and
    # cross-origin requests from its own UI only (deploy_runs/prefect_server.py)
    _start("server", [sys.executable, "-m", "deploy_runs.prefect_server",
                      "--host", host, "--port", str(port)], env, state)
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if _alive(state / "server.pid") is None:
            raise RuntimeError(f"the Prefect server exited; see {state / 'server.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not answer within {timeout:g}s")
        time.sleep(0.3)
    return url


def worker_env(url: str, auth_string: str | None = None) -> dict[str, str]:
    env = {**os.environ, **FLOW_SETTINGS, "PREFECT_API_URL": url}
    if auth_string:
        env["PREFECT_API_AUTH_STRING"] = auth_string
    return env


def start_worker(url: str, state: Path | None = None, name: str = "worker",
                 pool: str | None = None, warm: bool = True,
                 auth_string: str | None = None) -> int:
    """Start a worker for the deploy-runs pool (or `pool`) of the API at `url`, reusing one
    that is already running: Prefect's process worker with warm-started flow processes
    (deploy_runs.prefect_compat.warm_worker), or with `warm=False` Prefect's stock process
    worker (a baseline for benchmarks). `auth_string`: the API's (default: Prefect's settings
    PREFECT_API_AUTH_STRING, else PREFECT_SERVER_API_AUTH_STRING), for the worker and its runs."""
    state = state or home()
    pid = _alive(state / f"{name}.pid")
    if pid:
        return pid
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from deploy_runs.prefect_server import configured_auth_string
    from deploy_runs.spec import WORK_POOL, ensure_work_pool

    auth_string = (auth_string or configured_auth_string("client")
                   or configured_auth_string("server"))
    pool = pool or WORK_POOL
    updates = {PREFECT_API_URL: url}
    if auth_string:
        updates[PREFECT_API_AUTH_STRING] = auth_string
    with temporary_settings(updates=updates):
        ensure_work_pool(pool)
    argv = ([sys.executable, "-m", "deploy_runs.cli", "worker"] if warm else
            [sys.executable, "-m", "prefect", "worker", "start", "--type", "process"])
    return _start(name, [*argv, "--pool", pool, "--name", f"deploy-runs-{name}"],
                  worker_env(url, auth_string), state)


STOP_GRACE = 3.0


def stop(state: Path | None = None, timeout: float = 15.0, only: tuple[str, ...] = (),
         sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """Stop what start_server/start_worker/start_postgres/start_redis started (by PID file;
    `only` those names), with `sig`; after STOP_GRACE seconds SIGINT (a second signal ends
    uvicorn and Prefect's worker without waiting for open connections, such as a browser's
    websockets; PostgreSQL's fast shutdown), after `timeout` seconds SIGKILL; return what was
    stopped."""
    state = state or home()
    stopped = []
    # workers first, the databases last (they wait for the server's connections to close)
    order = {"server": 1, "postgres": 2, "redis": 2}
    for pid_file in sorted(state.glob("*.pid"), key=lambda p: (order.get(p.stem, 0), p.stem)):
        if only and pid_file.stem not in only:
            continue
        pid = _alive(pid_file)
        if pid:
            # Signal the process group (each started here leads its own): a worker's fork
            # server goes with it; its runs' processes lead groups of their own.
            os.killpg(pid, sig)
            began = time.monotonic()
            pressed = sig in (signal.SIGKILL, signal.SIGINT)
            while _alive(pid_file) and time.monotonic() < began + timeout:
                if not pressed and time.monotonic() > began + STOP_GRACE:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGINT)
                    pressed = True
                time.sleep(0.1)
            if _alive(pid_file):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped


def start_local(port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The embedded default: reuse PREFECT_API_URL when it answers, else start a local server
    listening on `host` (beyond loopback only with an auth string, see start_server); save the
    URL in the current Prefect profile (as `prefect config set` does; never the auth string)
    and start a worker. Returns the API URL; the caller's own process should use it through
    `prefect.settings.temporary_settings`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings, update_current_profile

    from deploy_runs.prefect_server import configured_auth_string

    url = os.environ.get("PREFECT_API_URL") or ""
    auth_string = None
    if not (url and healthy(url)):
        # the server's string is what the server started here will ask its worker for
        auth_string = configured_auth_string("server") or configured_auth_string("client")
        url = start_server(port, host=host, auth_string=auth_string)
        update_current_profile({PREFECT_API_URL: url})
    with temporary_settings(updates={PREFECT_API_URL: url}):
        start_worker(url, auth_string=auth_string)
    return url
