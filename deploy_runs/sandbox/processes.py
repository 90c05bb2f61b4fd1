"""Process helpers: run commands, start detached daemons with PID files, stop them by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeployRunsError

log = logging.getLogger("deploy_runs.sandbox")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(DeployRunsError, RuntimeError):
    """Something of the sandbox could not be set up, started or stopped."""


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, predictable environment for the daemons (nothing leaks in from the caller)."""
    env = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; raise ``SandboxError`` if it fails."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise SandboxError(f"{' '.join(argv)} failed with exit code {proc.returncode}: {detail}")
    return proc


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# --- /proc ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def cmdline(pid: int) -> list[str]:
    return _cmdline(pid) or []


def is_alive(pid: int, marker: str | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, given a marker, its command line contains it."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    if marker is None:
        return True
    args = _cmdline(pid)
    return args is not None and any(marker in a for a in args)


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(pidfile: Path, marker: str) -> int | None:
    """PID recorded in ``pidfile`` if that process is alive and is the one we started."""
    pid = read_pid(pidfile)
    if pid is not None and is_alive(pid, marker):
        return pid
    return None


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, starttime) of all live descendants of ``root``."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is None or st[0] in ("Z", "X", "x"):
            continue
        children.setdefault(st[1], []).append((int(entry), st[2]))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _same_process_alive(pid: int, starttime: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X", "x") and st[2] == starttime


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- starting -------------------------------------------------------------------------------

_SPAWN_SCRIPT = 'log=$1; shift; setsid "$@" >"$log" 2>&1 </dev/null & echo $!'


def spawn(argv: Sequence[str], *, logfile: Path, pidfile: Path, env: Mapping[str, str]) -> int:
    """Start ``argv`` detached (own session, not our child, stdio to ``logfile``).

    The PID of the daemon itself is written to ``pidfile`` and returned.  A shell starts the
    daemon in the background and exits, so the daemon is re-parented at once: no zombie and no
    open ``Popen`` object is left in the calling process, and the daemon outlives it.
    """
    logfile.parent.mkdir(parents=True, exist_ok=True)
    proc = run(["/bin/sh", "-c", _SPAWN_SCRIPT, "sh", str(logfile), *argv], env=env, timeout=30)
    pid = int(proc.stdout.strip())
    write_atomic(pidfile, f"{pid}\n")
    program = argv[2] if argv[0] == "nsenter" else argv[0]
    log.info("started %s (pid %d, log %s)", program, pid, logfile)
    return pid


def log_tail(logfile: Path, lines: int = 25) -> str:
    try:
        return "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Pending:
    """A daemon that was started (or is starting) and the check that says it is ready."""

    what: str
    ready: Callable[[], bool]
    pid: int | None
    logfile: Path | None
    timeout: float


def wait_all(pending: Iterable[Pending]) -> None:
    for p in pending:
        wait_until(p.ready, what=p.what, timeout=p.timeout, pid=p.pid, logfile=p.logfile)


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    pid: int | None = None,
    logfile: Path | None = None,
) -> None:
    """Poll ``ready`` until it is true; fail early if ``pid`` dies, and at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if ready():
            return
        if pid is not None and not is_alive(pid):
            if ready():
                return
            tail = log_tail(logfile) if logfile else ""
            raise SandboxError(f"{what}: process {pid} exited before it was ready\n{tail}")
        if time.monotonic() > deadline:
            tail = log_tail(logfile) if logfile else ""
            raise SandboxError(f"{what}: not ready after {timeout:.0f} s\n{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- stopping -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopTarget:
    """A daemon we started: its PID file and a string its command line must contain."""

    name: str
    pidfile: Path
    marker: str
    timeout: float = 10.0


def stop_all(targets: Iterable[StopTarget]) -> list[str]:
    """Stop the given daemons together: SIGTERM, wait (deadline), SIGKILL; then the same for
    descendants they left behind (e.g. SSH sessions of a stopped sshd).  Only PIDs from our PID
    files whose command line carries the marker are signalled.  Returns the names stopped."""
    live: list[tuple[StopTarget, int, int, list[tuple[int, int]]]] = []
    for t in targets:
        pid = running_pid(t.pidfile, t.marker)
        st = _proc_stat(pid) if pid is not None else None
        if pid is None or st is None:
            t.pidfile.unlink(missing_ok=True)
            continue
        live.append((t, pid, st[2], _descendants(pid)))
    for t, pid, _, _ in live:
        log.info("stopping %s (pid %d)", t.name, pid)
        _signal(pid, signal.SIGTERM)

    start = time.monotonic()
    pending = list(live)
    killed: set[int] = set()
    while pending:
        pending = [p for p in pending if _same_process_alive(p[1], p[2])]
        now = time.monotonic() - start
        for t, pid, _, _ in pending:
            if now > t.timeout and pid not in killed:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", t.name, pid, t.timeout)
                _signal(pid, signal.SIGKILL)
                killed.add(pid)
        if pending and now > max(t.timeout for t, *_ in pending) + 10:
            names = ", ".join(f"{t.name}({pid})" for t, pid, *_ in pending)
            raise SandboxError(f"could not stop {names}")
        if pending:
            time.sleep(0.02)

    leftovers = [d for *_, desc in live for d in desc if _same_process_alive(*d)]
    if leftovers:
        log.info("stopping %d leftover child processes", len(leftovers))
        for pid, _ in leftovers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.02)
            leftovers = [d for d in leftovers if _same_process_alive(*d)]
        for pid, _ in leftovers:
            _signal(pid, signal.SIGKILL)

    for t, *_ in live:
        t.pidfile.unlink(missing_ok=True)
    return [t.name for t, *_ in live]
