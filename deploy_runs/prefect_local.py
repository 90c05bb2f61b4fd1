"""The embedded default Prefect: a local server on SQLite and a process worker for the
`deploy-runs` work pool, started in the background with PID files and stopped by PID.

The settings deploy-runs relies on (fast worker polling, short log batching, log streaming)
are set here, so the worker, the demo and the tests get them without anyone exporting them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from deploy_runs.heartbeat import HEARTBEAT_ENV

DEFAULT_PORT = 4200

SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Log readers page through long logs 1,000 records at a time (Prefect's default is 200).
    "PREFECT_SERVER_API_DEFAULT_LIMIT": "1000",
}
FLOW_SETTINGS = {
    # Logs reach the API within ~0.1 s instead of the 2 s default.
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.1",
    # The worker looks for new runs every second instead of every 10.
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    # Runs send a heartbeat every 30 s (the minimum; default 180): a run whose process died
    # is then marked Crashed within about 90 s (deploy_runs/heartbeat.py).
    **HEARTBEAT_ENV,
}


def home() -> Path:
    path = Path(os.environ.get("DEPLOY_RUNS_HOME", Path.home() / ".deploy-runs")) / "prefect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}/api"


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


def start_server(port: int = DEFAULT_PORT, state: Path | None = None,
                 timeout: float = 90.0) -> str:
    """Start a local Prefect server unless one already answers there; return its API URL."""
    state = state or home()
    url = api_url(port)
    if healthy(url):
        return url
    env = {**os.environ, **SERVER_SETTINGS, "PREFECT_HOME": str(state / "home"),
           # the UI asks the server where the API is: without this it answers port 4200
           "PREFECT_UI_API_URL": url}
    env.pop("PREFECT_API_URL", None)
    _start("server", [sys.executable, "-m", "prefect", "server", "start",
                      "--host", "127.0.0.1", "--port", str(port)], env, state)
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if _alive(state / "server.pid") is None:
            raise RuntimeError(f"the Prefect server exited; see {state / 'server.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not answer within {timeout:g}s")
        time.sleep(0.3)
    return url


def worker_env(url: str) -> dict[str, str]:
    return {**os.environ, **FLOW_SETTINGS, "PREFECT_API_URL": url}


def start_worker(url: str, state: Path | None = None, name: str = "worker",
                 pool: str | None = None) -> int:
    """Start a process worker for the deploy-runs pool (or `pool`), reusing one that is
    already running."""
    state = state or home()
    pid = _alive(state / f"{name}.pid")
    if pid:
        return pid
    from deploy_runs.spec import WORK_POOL, ensure_work_pool

    pool = pool or WORK_POOL
    ensure_work_pool(pool)
    return _start(name, [sys.executable, "-m", "prefect", "worker", "start",
                         "--pool", pool, "--type", "process", "--name", f"deploy-runs-{name}"],
                  worker_env(url), state)


def stop(state: Path | None = None, timeout: float = 15.0) -> list[str]:
    """Stop what start_server/start_worker started (by PID file); return what was stopped."""
    state = state or home()
    stopped = []
    for pid_file in sorted(state.glob("*.pid")):
        pid = _alive(pid_file)
        if pid:
            # Signal the process group: the worker's flow processes go with it.
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid_file) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid_file):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped


def start_local(port: int = DEFAULT_PORT) -> str:
    """The embedded default: reuse PREFECT_API_URL when it answers, else start a local server;
    save the URL in the current Prefect profile (as `prefect config set` does) and start a
    worker. Returns the API URL; the caller's own process should use it through
    `prefect.settings.temporary_settings`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings, update_current_profile

    url = os.environ.get("PREFECT_API_URL") or ""
    if not (url and healthy(url)):
        url = start_server(port)
        update_current_profile({PREFECT_API_URL: url})
    with temporary_settings(updates={PREFECT_API_URL: url}):
        start_worker(url)
    return url
