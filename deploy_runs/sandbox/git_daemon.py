"""The git host: ``git daemon`` serving the bare repos of ``git_dir`` to every sandbox host.

Why a daemon: the deploy user cloning a root-owned repository by path fails with "dubious
ownership"; over git:// the daemon reads the repository and the deploy user only receives it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .hosts import GIT_PORT, LOCAL_ADDR
from .layout import Layout, mkdir
from .processes import (
    Pending,
    SandboxError,
    StopTarget,
    cmdline,
    daemon_env,
    port_open,
    run,
    running_pid,
    spawn,
    stop_all,
)

log = logging.getLogger("deploy_runs.sandbox")

GIT_TIMEOUT = 15.0


def _git_daemon_program() -> str:
    # the program itself, not "git daemon": git would run it as a child and the PID we record
    # would be git's
    exec_path = run(["git", "--exec-path"], env=daemon_env()).stdout.strip()
    return str(Path(exec_path) / "git-daemon")


def git_daemon_target(lay: Layout) -> StopTarget:
    return StopTarget("git-daemon", lay.git_daemon_dir / "git-daemon.pid",
                      str(lay.git_daemon_dir / "daemon.pid"), 5.0)


def git_daemon_running(lay: Layout) -> bool:
    t = git_daemon_target(lay)
    return running_pid(t.pidfile, t.marker) is not None


def start_git_daemon(lay: Layout, outside_addrs: list[str]) -> list[Pending]:
    """Run the daemon listening on 127.0.0.1 and on the outside veth address of each namespace
    host; restart it when that set of addresses changed."""
    addrs = [LOCAL_ADDR, *outside_addrs]
    target = git_daemon_target(lay)
    pid = running_pid(target.pidfile, target.marker)
    if pid is not None:
        listening = sorted(a.split("=", 1)[1] for a in cmdline(pid) if a.startswith("--listen="))
        if listening != sorted(addrs):
            log.info("git daemon must listen on %s: restarting it", ", ".join(addrs))
            stop_all([target])
            pid = None
    if pid is None:
        if port_open(LOCAL_ADDR, GIT_PORT, timeout=0.3):
            raise SandboxError(f"{LOCAL_ADDR}:{GIT_PORT} is taken by a process the sandbox did not start")
        mkdir(lay.git_daemon_dir)
        mkdir(lay.git_dir)
        # repos in git_dir may belong to root or to anyone: let upload-pack serve them all
        env = daemon_env({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                          "GIT_CONFIG_VALUE_0": "*"})
        pid = spawn(
            [_git_daemon_program(), "--reuseaddr", f"--base-path={lay.git_dir}", "--export-all",
             "--informative-errors", *(f"--listen={a}" for a in addrs), f"--port={GIT_PORT}",
             f"--pid-file={target.marker}"],
            logfile=lay.git_daemon_dir / "git-daemon.log", pidfile=target.pidfile, env=env,
        )
    logfile = lay.git_daemon_dir / "git-daemon.log"
    return [Pending(f"git-daemon on {a}:{GIT_PORT}", lambda a=a: port_open(a, GIT_PORT, 0.3), pid,
                    logfile, GIT_TIMEOUT) for a in addrs]
