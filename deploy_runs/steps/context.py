"""What the steps of one run share: the application, the requested ref, what earlier steps
found out (commit, images), and an SSH connection per server.

An application may have several servers: each step runs on each of them in turn (the step's
log says which), and `host()` / `server` / `releases` are those of the server the step is on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

from blocks import Application, SSHServer
from deploy_runs.commands import AppLayout
from deploy_runs.errors import StepStopped, StepTimedOut
from deploy_runs.hostkeys import pin_first_seen_key
from deploy_runs.models import ServiceRelease
from deploy_runs.prefect_compat.sync_calls import load_block
from deploy_runs.remote import RemoteHost, ServerAddress

if TYPE_CHECKING:
    from deploy_runs.steps.step import StepSpec


def servers_of(app: Application) -> list[SSHServer]:
    """The app's `server` and its `more_servers` blocks (loaded), in deploy order."""
    servers = [app.server]
    for name in app.more_servers:
        try:
            servers.append(load_block(SSHServer, name))
        except ValueError:
            raise ValueError(f"more_servers: no SSH server block named {name!r}") from None
    return servers


@dataclass
class DeployContext:
    run_id: UUID
    app: Application
    ref: str | None = None
    commit: str | None = None
    commit_message: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    servers: list[SSHServer] = field(default_factory=list)  # default: [app.server]
    current: int = 0  # index of the server the running step is on
    stopped: str | None = None
    # time.monotonic() deadline of the whole run (pauses extend it) and of the running step,
    # each with what to say when it passes
    run_deadline: tuple[float, str] | None = None
    deadline: tuple[float, str] | None = None
    _hosts: dict[int, RemoteHost] = field(default_factory=dict, repr=False)
    _releases: dict[int, dict[str, ServiceRelease]] = field(default_factory=dict, repr=False)
    # services worked side by side share the connection: one thread (re)opens it
    _host_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.servers:
            self.servers = [self.app.server]

    @property
    def layout(self) -> AppLayout:
        return AppLayout(self.app.name)

    @property
    def server(self) -> SSHServer:
        return self.servers[self.current]

    @staticmethod
    def label(server: SSHServer) -> str:
        return f"{server.username}@{server.host}:{server.port}"

    @property
    def multi(self) -> bool:
        return len(self.servers) > 1

    @property
    def releases(self) -> dict[str, ServiceRelease]:
        """What this run did with each service on the current server."""
        return self._releases.setdefault(self.current, {})

    def merged_releases(self) -> dict[str, ServiceRelease]:
        """Per service, over all servers: rebuilt/replaced where any server did it; the reason
        per server when they differ."""
        per_server = [(self.label(self.servers[i]), r) for i, r in sorted(self._releases.items())]
        merged: dict[str, ServiceRelease] = {}
        # in the app's order of services, whatever order the steps handled them in
        order = {s.name: i for i, s in enumerate(self.app.services)}
        names = {n: None for _, releases in per_server for n in releases}
        for name in sorted(names, key=lambda n: order.get(n, len(order))):
            found = [(where, rel[name]) for where, rel in per_server if name in rel]
            build, build_reason = _combine(found, "build", "build_reason", "rebuilt")
            container, container_reason = _combine(found, "container", "container_reason",
                                                   "replaced")
            merged[name] = found[0][1].model_copy(update={
                "build": build, "build_reason": build_reason,
                "container": container, "container_reason": container_reason})
        return merged

    def server_address(self) -> ServerAddress:
        server = self.server
        return ServerAddress(
            host=server.host,
            port=server.port,
            username=server.username,
            private_key=server.private_key.get_secret_value(),
            host_key=server.host_key,
            accept_unknown_host_key=server.accept_unknown_host_key,
            connect_timeout=server.connect_timeout,
        )

    def host(self) -> RemoteHost:
        """The run's SSH connection, opened on first use and reopened if it dropped."""
        self.check_stopped()
        with self._host_lock:
            current = self._hosts.get(self.current)
            if current is None or not current.is_connected():
                if current is not None:
                    current.close()
                host = RemoteHost(self.server_address())
                host.interrupted = self.stopped
                host.deadline = self.deadline
                host.connect()
                if host.first_seen_key:  # trust on first use (accept_unknown_host_key)
                    host.notes.append(pin_first_seen_key(self.server, host.first_seen_key))
                self._hosts[self.current] = current = host
            return current

    def start_run_clock(self) -> None:
        limit = self.app.timeouts.run
        self.run_deadline = (time.monotonic() + limit,
                             f"run timed out after {limit:g}s (timeouts.run)")

    def extend_run_clock(self, seconds: float) -> None:
        """Time spent paused does not count against the run's time limit."""
        if self.run_deadline is not None:
            self.run_deadline = (self.run_deadline[0] + seconds, self.run_deadline[1])

    def begin_step(self, spec: StepSpec) -> None:
        """Start the step's clock: its commands are killed when the step's (or the run's)
        time limit passes (the step's `limit` setting of the app's `timeouts`)."""
        field_name, limit = spec.limit, float(getattr(self.app.timeouts, spec.limit))
        deadline = (time.monotonic() + limit,
                    f"step timed out after {limit:g}s (timeouts.{field_name})")
        if self.run_deadline is not None and self.run_deadline[0] < deadline[0]:
            deadline = self.run_deadline
        self.deadline = deadline
        for host in list(self._hosts.values()):
            host.deadline = deadline

    def seconds_left(self) -> float:
        return self.deadline[0] - time.monotonic() if self.deadline else float("inf")

    def check_deadline(self) -> None:
        """For steps that wait without a remote command running (e.g. health probes)."""
        if self.deadline is not None and time.monotonic() > self.deadline[0]:
            raise StepTimedOut(self.deadline[1])

    def interrupt(self, reason: str) -> None:
        """Stop the running step now (called from the stop watcher's thread)."""
        self.stopped = reason
        for host in list(self._hosts.values()):
            host.interrupt(reason)

    def check_stopped(self) -> None:
        """For steps that wait without a remote command running (e.g. health probes)."""
        if self.stopped:
            raise StepStopped(self.stopped)

    def __enter__(self) -> DeployContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()
        self._hosts.clear()


def _combine(found: list[tuple[str, ServiceRelease]], kind: str, reason: str,
             changed: str) -> tuple[object, object]:
    """One decision (e.g. build: rebuilt/reused) over servers: `changed` if any server made
    that change; the reason as is when all agree, else each server's."""
    kinds = [getattr(r, kind) for _, r in found]
    reasons = [getattr(r, reason) for _, r in found]
    if len(set(kinds)) == 1 and len(set(reasons)) == 1:
        return kinds[0], reasons[0]
    return (changed if changed in kinds else kinds[0],
            "; ".join(f"{where}: {k} ({why})"
                      for (where, _), k, why in zip(found, kinds, reasons, strict=True)))
