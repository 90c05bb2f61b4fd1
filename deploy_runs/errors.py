"""The exceptions deploy-runs raises, so callers can catch what they mean."""

from __future__ import annotations


class DeployRunsError(Exception):
    """Base of every deploy-runs error."""


class ConfigError(DeployRunsError, ValueError):
    """Invalid configuration, refused before any server is touched."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in problems))


class AppNotFound(DeployRunsError, LookupError):
    pass


class AppBusy(DeployRunsError):
    """A deploy refused because the application already has an active run (policy `reject`)."""


class NoWorker(DeployRunsError):
    """A deploy refused because no worker serves the application's work pool (the app's
    `require_worker_seconds`)."""


class APIUnavailable(DeployRunsError, ConnectionError):
    """The Prefect API does not answer (its server stopped, restarting, unreachable)."""

    def __init__(self, url: str | None, cause: BaseException) -> None:
        self.url = url
        where = f"at {url} " if url else "(no PREFECT_API_URL is set) "
        detail = str(cause) or type(cause).__name__
        super().__init__(
            f"the Prefect API {where}does not answer ({type(cause).__name__}: {detail}). Is its "
            "server running? `deploy-runs prefect up` starts the local one; PREFECT_API_URL "
            "chooses another.")


class RunNotFound(DeployRunsError, LookupError):
    pass


class InvalidControl(DeployRunsError):
    """A control (pause, resume, stop) that does not apply to the run as it stands."""


class WaitTimeout(DeployRunsError, TimeoutError):
    pass


# Remote execution --------------------------------------------------------------------------

class RemoteError(DeployRunsError):
    """Something went wrong on, or on the way to, the server."""


class ConnectionFailed(RemoteError):
    """The SSH connection could not be opened (unreachable, refused, authentication)."""


class HostKeyError(ConnectionFailed):
    """The server's host key is not the pinned one, or no key is pinned."""


class ConnectionLost(RemoteError):
    """The SSH connection dropped while a command ran."""


class CommandFailed(RemoteError):
    """A command exited non-zero."""

    def __init__(self, command: str, exit_code: int | None, output_tail: list[str],
                 message: str | None = None) -> None:
        self.command = command
        self.exit_code = exit_code
        self.output_tail = output_tail
        text = message or f"command exited with code {exit_code}"
        tail = "\n".join(f"  | {line[:500]}" for line in output_tail[-10:])
        super().__init__(f"{text}: $ {command}" + (f"\n{tail}" if tail else ""))


class CommandTimedOut(CommandFailed):
    pass


class StepFailed(DeployRunsError):
    """A step could not do its job for a reason that is not one failing command."""

    def __init__(self, message: str, evidence: list[str] | None = None) -> None:
        self.evidence = evidence or []
        super().__init__(message)


class StepTimedOut(StepFailed):
    """The step (or the run) ran past its time limit while not running a command."""


class StepStopped(DeployRunsError):
    """The step was interrupted by a Stop request (not a failure of the step itself)."""
