"""up / add_host / down / status: the sandbox as a whole."""

from __future__ import annotations

import logging
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import netns
from .access import ensure_client_key, ensure_deploy_user
from .engine import (
    MAIN_DOCKER_HOST,
    engine_answers,
    ensure_base_image,
    ensure_proxy_image,
    main_engine_target,
    ns_engine_running,
    ns_engine_target,
    socket_path,
    start_main_engine,
    start_ns_engine,
)
from .git_daemon import git_daemon_running, git_daemon_target, start_git_daemon
from .hosts import BUILDKIT_NAME, LOCAL_NAME, HostSpec, check_sshd_port, sshd_running, sshd_target, start_sshd
from .layout import Layout, State, locked
from .models import SandboxHost, SandboxInfo
from .netns import NetnsHost
from .packages import check_programs, install
from .processes import Pending, _descendants, cmdline, running_pid, stop_all, wait_all

log = logging.getLogger("deploy_runs.sandbox")

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def up(extra_hosts: int = 0) -> SandboxInfo:
    """Bring the sandbox up: the main engine, sshd on 127.0.0.1:2222, the git daemon, namespace
    hosts ``h1``..``h<extra_hosts>``, and every namespace host added and not taken down since.
    Idempotent: starts what is not running and reuses what is."""
    if not 0 <= extra_hosts <= 254:
        raise ValueError("extra_hosts must be between 0 and 254")
    install()
    lay = Layout.current()
    with locked(lay):
        state = State.load(lay)
        for i in range(1, extra_hosts + 1):
            state.activate(f"h{i}")
        state.save(lay)  # allocations are recorded before anything is created
        _bring_up(lay, state, local=True, hosts=state.active())
    return status()


def add_host(name: str) -> SandboxHost:
    """One more network-namespace host ``name``: netns ``dr-<name>`` reached at 10.200.N.2:22,
    with its own engine; idempotent per name.  The git daemon then also listens on 10.200.N.1."""
    if name in (LOCAL_NAME, BUILDKIT_NAME) or not _NAME_RE.match(name):
        raise ValueError(f"invalid host name {name!r}: lowercase letters, digits and '-', "
                         f"at most 32 characters, not {LOCAL_NAME!r} or {BUILDKIT_NAME!r}")
    install()
    lay = Layout.current()
    with locked(lay):
        state = State.load(lay)
        host = state.activate(name)
        state.save(lay)
        _bring_up(lay, state, local=False, hosts=[host])
    return HostSpec.namespaced(lay, host).model()


def stop_engine(name: str) -> None:
    """Stop the Docker engine of namespace host ``name`` (its sshd keeps running): a server
    whose engine is down.  ``add_host(name)`` starts it again."""
    lay = Layout.current()
    with locked(lay):
        state = State.load(lay)
        host = next((h for h in state.active() if h.name == name), None)
        if host is None:
            raise ValueError(f"no active namespace host {name!r}")
        spec = HostSpec.namespaced(lay, host)
        stop_all([ns_engine_target(spec)])
        sock = Path(socket_path(host.docker_host))
        if sock.is_socket() and not engine_answers(host.docker_host, timeout=0.5):
            sock.unlink(missing_ok=True)


def freeze_engine(name: str, frozen: bool = True) -> None:
    """Stop (SIGSTOP) the Docker engine of namespace host ``name`` without ending it, or let
    it go on (``frozen=False``): a server whose engine hangs, so that every docker command
    waits for ever."""
    lay = Layout.current()
    state = State.load(lay)
    host = next((h for h in state.active() if h.name == name), None)
    if host is None:
        raise ValueError(f"no active namespace host {name!r}")
    target = ns_engine_target(HostSpec.namespaced(lay, host))
    pid = running_pid(target.pidfile, target.marker)
    if pid is None:
        raise ValueError(f"the engine of {name!r} is not running")
    engines = [p for p in [pid, *(child for child, _ in _descendants(pid))]
               if Path(cmdline(p)[0] if cmdline(p) else "").name == "dockerd"]
    for engine in engines:
        os.kill(engine, signal.SIGSTOP if frozen else signal.SIGCONT)


def down() -> None:
    """Stop what up/add_host started (only PIDs from the sandbox's PID files) and delete the
    namespaces and veths they created.  Keys, git_dir, engine data and the host addresses are
    kept, so a later up() brings back the same hosts with the same keys."""
    lay = Layout.current()
    if not lay.dir.exists():
        return
    with locked(lay):
        state = State.load(lay)
        specs = [HostSpec.local(lay), HostSpec.buildkit(lay)] + [
            HostSpec.namespaced(lay, h) for h in state.all()]
        stop_all([
            *(sshd_target(s) for s in specs),
            git_daemon_target(lay),
            *(ns_engine_target(s) for s in specs if s.ns is not None),
            main_engine_target(lay),
        ])
        for h in state.all():
            netns.delete(h)
            sock = Path(socket_path(h.docker_host))
            if sock.is_socket() and not engine_answers(h.docker_host, timeout=0.5):
                sock.unlink(missing_ok=True)  # left behind by an engine that had to be killed
        state.deactivate_all()
        state.save(lay)


def status() -> SandboxInfo:
    """What the sandbox consists of and whether each part is alive; starts nothing."""
    lay = Layout.current()
    state = State.load(lay)
    local, buildkit = HostSpec.local(lay), HostSpec.buildkit(lay)
    running = {
        "dockerd": engine_answers(MAIN_DOCKER_HOST, timeout=1.0),
        "sshd": sshd_running(local),
        f"{buildkit.label}sshd": sshd_running(buildkit),
        "git-daemon": git_daemon_running(lay),
    }
    hosts = [local.model(), buildkit.model()]
    for h in state.active():
        spec = HostSpec.namespaced(lay, h)
        hosts.append(spec.model())
        running[f"{spec.label}netns"] = h.exists() and h.veth_exists()
        running[f"{spec.label}dockerd"] = ns_engine_running(spec)
        running[f"{spec.label}sshd"] = sshd_running(spec)
    return SandboxInfo(dir=lay.dir, git_dir=lay.git_dir, hosts=hosts, running=running)


def _bring_up(lay: Layout, state: State, *, local: bool, hosts: list[NetnsHost]) -> None:
    """Start whatever is down of: the shared parts, the loopback host (if ``local``), ``hosts``.
    Every daemon is started first and waited for afterwards, so their start-ups overlap."""
    check_programs()
    ensure_client_key(lay, ensure_deploy_user())
    for h in hosts:
        netns.ensure(h)
    ns_specs = [HostSpec.namespaced(lay, h) for h in hosts]
    specs = [HostSpec.local(lay), HostSpec.buildkit(lay)] * local + ns_specs
    for spec in specs:
        check_sshd_port(spec)  # before anything starts, rather than half-way

    pending: list[Pending] = []
    if local:
        pending += start_main_engine(lay)
    for spec in ns_specs:
        pending += start_ns_engine(spec)
    pending += start_git_daemon(lay, [h.outside_addr for h in state.active() if h.veth_exists()])
    for spec in specs:
        pending += start_sshd(spec)
    wait_all(pending)

    engines = {s.docker_host: None for s in specs}  # the BuildKit host shares local's
    builds = [(ensure, host) for host in engines for ensure in (ensure_base_image, ensure_proxy_image)]
    with ThreadPoolExecutor(max_workers=max(1, len(builds))) as pool:
        for built in [pool.submit(ensure, host) for ensure, host in builds]:
            built.result()
