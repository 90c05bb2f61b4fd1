"""What the steps of one run share: the application, the requested ref, what earlier steps
found out (commit, images), and the one SSH connection to the server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from uuid import UUID

from blocks import Application
from deploy_runs.commands import AppLayout
from deploy_runs.errors import StepStopped, StepTimedOut
from deploy_runs.models import ServiceRelease
from deploy_runs.remote import RemoteHost, ServerAddress


@dataclass
class DeployContext:
    run_id: UUID
    app: Application
    ref: str | None = None
    commit: str | None = None
    commit_message: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    releases: dict[str, ServiceRelease] = field(default_factory=dict)
    stopped: str | None = None
    # time.monotonic() deadline of the whole run (pauses extend it) and of the running step,
    # each with what to say when it passes
    run_deadline: tuple[float, str] | None = None
    deadline: tuple[float, str] | None = None
    _host: RemoteHost | None = field(default=None, repr=False)

    @property
    def layout(self) -> AppLayout:
        return AppLayout(self.app.name)

    def server_address(self) -> ServerAddress:
        server = self.app.server
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
        if self._host is None or not self._host.is_connected():
            if self._host is not None:
                self._host.close()
            host = RemoteHost(self.server_address())
            host.interrupted = self.stopped
            host.deadline = self.deadline
            host.connect()
            self._host = host
        return self._host

    def start_run_clock(self) -> None:
        limit = self.app.timeouts.run
        self.run_deadline = (time.monotonic() + limit,
                             f"run timed out after {limit:g}s (timeouts.run)")

    def extend_run_clock(self, seconds: float) -> None:
        """Time spent paused does not count against the run's time limit."""
        if self.run_deadline is not None:
            self.run_deadline = (self.run_deadline[0] + seconds, self.run_deadline[1])

    def begin_step(self, name: str) -> None:
        """Start the step's clock: its commands are killed when the step's (or the run's)
        time limit passes."""
        field_name, limit = self.app.timeouts.for_step(name)
        deadline = (time.monotonic() + limit,
                    f"step timed out after {limit:g}s (timeouts.{field_name})")
        if self.run_deadline is not None and self.run_deadline[0] < deadline[0]:
            deadline = self.run_deadline
        self.deadline = deadline
        if self._host is not None:
            self._host.deadline = deadline

    def seconds_left(self) -> float:
        return self.deadline[0] - time.monotonic() if self.deadline else float("inf")

    def check_deadline(self) -> None:
        """For steps that wait without a remote command running (e.g. health probes)."""
        if self.deadline is not None and time.monotonic() > self.deadline[0]:
            raise StepTimedOut(self.deadline[1])

    def interrupt(self, reason: str) -> None:
        """Stop the running step now (called from the stop watcher's thread)."""
        self.stopped = reason
        if self._host is not None:
            self._host.interrupt(reason)

    def check_stopped(self) -> None:
        """For steps that wait without a remote command running (e.g. health probes)."""
        if self.stopped:
            raise StepStopped(self.stopped)

    def __enter__(self) -> DeployContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None
