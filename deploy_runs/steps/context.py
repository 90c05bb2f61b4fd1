"""What the steps of one run share: the application, the requested ref, what earlier steps
found out (commit, images), and the one SSH connection to the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from blocks import Application
from deploy_runs.commands import AppLayout
from deploy_runs.errors import StepStopped
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
            host.connect()
            self._host = host
        return self._host

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
