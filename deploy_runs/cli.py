"""The `deploy-runs` command: runs in the product's vocabulary, and what Prefect's CLI lacks."""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from deploy_runs.errors import DeployRunsError
from deploy_runs.safetext import safe_terminal
from deploy_runs.status import RunStatus
from deploy_runs.view import (
    progress_lines,
    render_comparison,
    render_failures,
    render_log_line,
    render_matches,
    render_run,
    render_runs,
    render_stats,
    step_header,
)

if TYPE_CHECKING:  # annotations only: --help imports no Prefect, no models
    from deploy_runs.logs import LogLine
    from deploy_runs.models import Run

app = typer.Typer(name="deploy-runs", no_args_is_help=True, rich_markup_mode="rich",
                  help="Deploy applications over SSH and Docker; every deploy is a Prefect run.")
apps_app = typer.Typer(no_args_is_help=True, help="Register and list applications.")
sandbox_app = typer.Typer(no_args_is_help=True,
                          help="Local target servers (real sshd + Docker engine) for demos and tests.")
prefect_app = typer.Typer(no_args_is_help=True,
                          help="The embedded local Prefect server (SQLite) and worker.")
notify_app = typer.Typer(no_args_is_help=True,
                         help="Tell people when runs end, through Prefect notification blocks.")
app.add_typer(apps_app, name="apps")
webhooks_app = typer.Typer(no_args_is_help=True,
                           help="Deploy on push: receive GitHub, GitLab and Gitea/Forgejo push "
                                "webhooks.")
app.add_typer(notify_app, name="notify")
app.add_typer(webhooks_app, name="webhooks")
WEBHOOK_PORT = 8787
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(prefect_app, name="prefect")

console = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"deploy-runs {version('deploy-runs')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Deploy applications over SSH and Docker; every deploy is a Prefect run."""
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn deploy-runs errors into a red message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, DeployRunsError) and not _transport_error(exc):
                raise
            exc = _api_unavailable(exc) or exc
            # its text may hold a server's or a repository's words: shown as text, never markup
            err.print(Text.assemble(("error: ", "red"), safe_terminal(str(exc), keep_newlines=True)),
                      highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _transport_error(exc: BaseException) -> bool:
    """An httpx connection error (imported only by commands that talk to the API)."""
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(exc, httpx.TransportError)


def _api_unavailable(exc: BaseException) -> DeployRunsError | None:
    from deploy_runs.client import api_unavailable

    return api_unavailable(exc)


def _look(client: Any, run: Run, away: dict[str, float]) -> tuple[Run, str | None]:
    """The run read again; while the API does not answer (a server restarting), the run as
    last read and a note, for FOLLOW_OUTAGE seconds, then the error."""
    from deploy_runs.errors import APIUnavailable
    from deploy_runs.logs import FOLLOW_OUTAGE

    try:
        fresh = client.get_run(run.id)
    except APIUnavailable as exc:
        since = away.setdefault("since", time.monotonic())
        if time.monotonic() - since > FOLLOW_OUTAGE:
            raise
        return run, f"{exc} Still trying; the run goes on without it."
    away.pop("since", None)
    return fresh, None


def _client():
    from deploy_runs.client import DeployRuns

    return DeployRuns()


def _print_json(value: Run | list[Run]) -> None:
    if isinstance(value, list):
        console.print_json(json.dumps([json.loads(r.model_dump_json()) for r in value]))
    else:
        console.print_json(value.model_dump_json())


def follow(run: Run, poll_interval: float = 0.3, tail_lines: int = 8) -> Run:
    """Show the run's steps updating live until it ends, with the current step's latest lines;
    without a terminal (CI logs, pipes), a plain line for each change as it happens."""
    if not console.is_terminal:
        return follow_plain(run, poll_interval)
    client = _client()
    tail: deque[LogLine] = deque(maxlen=tail_lines)

    def read_logs() -> None:
        for line in _client().logs(run.id, follow=True):
            if line.step is None:
                continue
            if tail and tail[-1].step != line.step:
                tail.clear()
            tail.append(line)

    # The thread sees the caller's Prefect settings (they live in a context variable).
    reader = threading.Thread(target=contextvars.copy_context().run, args=(read_logs,),
                              daemon=True)
    reader.start()
    away: dict[str, float] = {}
    with Live(render_run(run), console=console, refresh_per_second=8) as live:
        while not run.status.is_final:
            time.sleep(poll_interval)
            run, note = _look(client, run, away)
            view = render_run(run, list(tail))
            live.update(Group(view, Text(note, style="yellow3")) if note else view)
        live.update(render_run(run))
    return run


def follow_plain(run: Run, poll_interval: float = 0.3) -> Run:
    """Plain lines as the run goes (view.progress_lines), then the run as `show` prints it."""
    client = _client()
    seen: dict[str, object] = {}
    away: dict[str, float] = {}
    said = None
    while True:
        for line in progress_lines(seen, run):
            console.print(Text(line), highlight=False, soft_wrap=True)
        console.file.flush()
        if run.status.is_final:
            break
        time.sleep(poll_interval)
        run, note = _look(client, run, away)
        if note and not said:
            console.print(Text(f"  {note}"), highlight=False, soft_wrap=True)
        said = note
    console.print(render_run(run))
    return run


@app.command()
@friendly
def deploy(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    ref: Annotated[str | None, typer.Option(help="Git ref to deploy (default: branch head).")] = None,
    detach: Annotated[bool, typer.Option(help="Print the run id and return at once.")] = False,
) -> None:
    """Deploy APP: start a run and show its steps live (exit 0 only if it completes)."""
    _watch(_client().deploy(app_name, ref=ref), detach)


def _watch(run: Run, detach: bool) -> None:
    if detach:
        console.print(str(run.id))
        return
    run = follow(run)
    raise typer.Exit(0 if run.status is RunStatus.COMPLETED else 1)


@app.command()
@friendly
def redeploy(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    detach: Annotated[bool, typer.Option(help="Print the run id and return at once.")] = False,
) -> None:
    """Redeploy APP with the latest commit of its branch; only what changed is rebuilt."""
    _watch(_client().redeploy(app_name), detach)


@app.command()
@friendly
def rollback(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    to: Annotated[str | None, typer.Option(
        "--to", metavar="RUN", help="A Completed run whose release to put back (default: the "
                                    "release before the current one).")] = None,
    detach: Annotated[bool, typer.Option(help="Print the run id and return at once.")] = False,
) -> None:
    """Put an earlier release of APP back: its images (no build while they are kept on the
    servers) and its runtime configuration."""
    _watch(_client().rollback(app_name, to), detach)


@app.command()
@friendly
def retry(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="Id of a failed run.")],
    detach: Annotated[bool, typer.Option(help="Print the run id and return at once.")] = False,
) -> None:
    """Retry a failed run from its failed step: earlier steps whose inputs are unchanged
    (same commit, same configuration) are reused, not run again."""
    _watch(_client().retry(run_id), detach)


@app.command()
@friendly
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="Run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the Run model as JSON.")] = False,
) -> None:
    """Show one run: its status, steps, commit and error."""
    run = _client().get_run(run_id)
    _print_json(run) if as_json else console.print(render_run(run))


@app.command()
@friendly
def logs(
    run_id: Annotated[str | None, typer.Argument(metavar="RUN", help="Run id.")] = None,
    step: Annotated[str | None, typer.Option(help="Only this step's lines.")] = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f",
                                          help="Keep printing new lines until the run ends.")] = False,
    search: Annotated[str | None, typer.Option(
        help="Search past runs' logs for lines containing this text (most recent first).")] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="With --search: this app.")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="With --search.")] = 90,
) -> None:
    """Print a run's logs: each step's commands and their output, line by line. With
    --search, matching lines across historical runs."""
    if search is not None:
        console.print(render_matches(_client().search_logs(search, app_name, days)))
        return
    if run_id is None:
        raise typer.BadParameter("give a RUN id, or --search PATTERN")
    current: object = object()
    for line in _client().logs(run_id, step=step, follow=follow_):
        if line.step != current:
            current = line.step
            console.print(step_header(line.step))
        console.print(render_log_line(line), highlight=False, markup=False, soft_wrap=True)


def _since(value: str | None) -> datetime | None:
    """'7d', '12h', '30m' ago, or an ISO date/time."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)([dhm])", value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        unit_name = {"d": "days", "h": "hours", "m": "minutes"}[unit]
        return datetime.now(UTC) - timedelta(**{unit_name: amount})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("expected e.g. 7d, 12h, 30m or an ISO date") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
@friendly
def runs(
    app_name: Annotated[str | None, typer.Option("--app", help="Only runs of this app.")] = None,
    status: Annotated[list[RunStatus] | None, typer.Option(
        help="Only runs with this status (repeatable).", case_sensitive=False)] = None,
    since: Annotated[str | None, typer.Option(help="Created since: 7d, 12h, 30m or a date.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (paging).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print Run models as JSON.")] = False,
) -> None:
    """List runs, most recent first."""
    found = _client().runs(app=app_name, status=status or None, since=_since(since),
                           limit=limit, offset=offset)
    _print_json(found) if as_json else console.print(render_runs(found))


@app.command()
@friendly
def compare(
    run_a: Annotated[str, typer.Argument(metavar="A", help="Run id (usually the older).")],
    run_b: Annotated[str, typer.Argument(metavar="B", help="Run id.")],
    repo: Annotated[Path | None, typer.Option(help="A local clone, to list the commits "
                                                   "between the two runs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the RunComparison as JSON.")] = False,
) -> None:
    """Compare two runs side by side: steps, durations, commits, rebuilt services, config
    changes, errors, and where the failing step's output diverges."""
    comparison = _client().compare(run_a, run_b, repo)
    _print_json(comparison) if as_json else console.print(render_comparison(comparison))


@app.command()
@friendly
def stats(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application name.")],
    days: Annotated[int, typer.Option(min=1, max=3650)] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print RunStats as JSON.")] = False,
) -> None:
    """Deploy frequency, success rate, durations (with a chart), time to recover, trend."""
    found = _client().stats(app_name, days)
    _print_json(found) if as_json else console.print(render_stats(found))


@app.command()
@friendly
def failures(
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app.")] = None,
    days: Annotated[int, typer.Option(min=1, max=3650)] = 90,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Recurring failures: failed runs grouped by signature, most frequent first."""
    found = _client().recurring_failures(app_name, days)
    _print_json(found) if as_json else console.print(render_failures(found))


def _control(action: str, run_id: str) -> None:
    client = _client()
    run = getattr(client, action)(run_id)
    console.print(render_run(run))


@app.command()
@friendly
def pause(run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Pause RUN: the running step finishes, then the run waits."""
    _control("pause", run_id)


@app.command()
@friendly
def resume(run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Resume paused RUN: it continues with the next step."""
    _control("resume", run_id)


@app.command()
@friendly
def stop(run_id: Annotated[str, typer.Argument(metavar="RUN")]) -> None:
    """Stop RUN: the running step is interrupted (its command killed on the server), no
    further step starts; finished steps are not rolled back."""
    _control("stop", run_id)


@apps_app.command("add")
@friendly
def apps_add(spec: Annotated[Path, typer.Argument(help="App spec YAML file.")]) -> None:
    """Validate an app spec, save it as blocks and create its Prefect deployment."""
    from deploy_runs.spec import application_from_file, register
    from deploy_runs.webhooks import PATH, ensure_secret

    application = application_from_file(spec)
    register(application)
    console.print(f"[green]✔[/green] saved application [bold]{application.name}[/bold] "
                  f"({len(application.services)} service(s)) and deployment "
                  f"[bold]deploy-app/{application.name}[/bold]")
    secret, _ = ensure_secret(application.name)
    console.print(f"Deploy on push of {application.branch}: in your git host, a push webhook to "
                  f"http://THIS-HOST:{WEBHOOK_PORT}{PATH} (`deploy-runs webhooks serve`, behind "
                  f"TLS), content type application/json, secret from Prefect Secret block "
                  f"[bold]{secret}[/bold] (`deploy-runs webhooks secret {application.name}`).",
                  highlight=False)


@apps_app.command("list")
@friendly
def apps_list() -> None:
    """List saved applications."""
    from blocks import Application
    from deploy_runs.spec import list_applications

    for name in list_applications():
        application = Application.load(name)
        services = ", ".join(f"{s.name}:{s.host_port}" for s in application.services)
        console.print(f"[bold]{name}[/bold]  {application.repository}@{application.branch}  "
                      f"server={application.server.address}"
                      + "".join(f" +{n}" for n in application.more_servers)
                      + f"  services={services}")


@app.command("prune")
@friendly
def prune(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application.")],
    keep: Annotated[int | None, typer.Option(
        help="Releases to keep (default: the app's keep_releases, 5).", min=1)] = None,
) -> None:
    """Remove the images and stopped containers of the app's older releases from its servers
    (a Completed run does it too)."""
    for server, removed in _client().prune(app_name, keep).items():
        console.print(f"[bold]{server}[/bold]: " + (", ".join(removed) or "nothing to remove"),
                      highlight=False, soft_wrap=True)


@notify_app.command("add")
@friendly
def notify_add(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]",
                                                   help="Application (or --all).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every application.")] = False,
    on: Annotated[str, typer.Option("--on", help="Statuses that notify, comma-separated: "
                                                 "Completed, Failed, Stopped.")] = "Failed",
    block: Annotated[str, typer.Option("--block", metavar="TYPE/NAME",
                                       help="Prefect notification block, e.g. slack-webhook/ops "
                                            "or custom-webhook/team.")] = "",
) -> None:
    """Notify through a Prefect notification block when runs end.

    Each notification is a Prefect automation, visible and editable under Automations in the
    Prefect UI."""
    if (app_name is None) == (not every):
        raise DeployRunsError("name an application, or give --all (not both)")
    if not block:
        raise DeployRunsError("--block TYPE/NAME is required (a Prefect notification block)")
    made = _client().add_notification(None if every else app_name, on, block)
    console.print(f"[green]✔[/green] {made.name}  [dim](automation {made.id})[/dim]",
                  highlight=False, soft_wrap=True)


@notify_app.command("list")
@friendly
def notify_list(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]", help="Application.")] = None,
) -> None:
    """List notifications (of one application, and those of every application)."""
    found = _client().notifications(app_name)
    if not found:
        console.print("no notifications", style="dim")
    for n in found:
        paused = "" if n.enabled else "  [yellow](paused)[/yellow]"
        console.print(f"{n.id}  [bold]{n.app or '(all apps)'}[/bold] on {','.join(n.on)} via "
                      f"{n.block}{paused}", highlight=False, soft_wrap=True)


@notify_app.command("remove")
@friendly
def notify_remove(
    which: Annotated[str, typer.Argument(metavar="ID|NAME", help="As `notify list` shows it.")],
) -> None:
    """Remove a notification."""
    gone = _client().remove_notification(which)
    console.print(f"[green]✔[/green] removed {gone.name}", highlight=False, soft_wrap=True)


@webhooks_app.command("serve")
@friendly
def webhooks_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = WEBHOOK_PORT,
    max_body_mb: Annotated[float, typer.Option(help="Largest body taken, in MB.")] = 10.0,
) -> None:
    """Receive push webhooks and redeploy the apps that deploy the pushed branch, at the
    pushed commit (each push verified against the app's secret)."""
    import uvicorn

    from deploy_runs.webhooks import PATH, prefect_hooks, receiver, start_push_run

    console.print(f"receiving pushes at http://{host}:{port}{PATH}", highlight=False)
    uvicorn.run(receiver(prefect_hooks, start_push_run, int(max_body_mb * 1_000_000)),
                host=host, port=port, log_level="info")


@webhooks_app.command("secret")
@friendly
def webhooks_secret(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application.")],
    rotate: Annotated[bool, typer.Option(help="Make a new secret first.")] = False,
) -> None:
    """Print the app's webhook secret, to set in the git host (made if there is none)."""
    from deploy_runs.errors import AppNotFound
    from deploy_runs.spec import list_applications
    from deploy_runs.webhooks import read_secret

    if app_name not in list_applications():
        raise AppNotFound(f"no application {app_name!r}: add it with `deploy-runs apps add "
                          "SPEC.yaml`")
    console.print(read_secret(app_name, rotate), highlight=False, soft_wrap=True)


@sandbox_app.command("up")
@friendly
def sandbox_up(
    hosts: Annotated[int, typer.Option(help="Extra network-namespace hosts.")] = 0,
    save: Annotated[bool, typer.Option(help="Save each host as an SSHServer block.")] = True,
) -> None:
    """Install (if needed) and start the sandbox; print the connection details."""
    from deploy_runs import sandbox

    sandbox.install()
    info = sandbox.up(extra_hosts=hosts)
    for host in info.hosts:
        console.print(f"[bold]{host.name}[/bold]  ssh {host.username}@{host.host} -p {host.port} "
                      f"-i {host.private_key_path}  host key {host.host_key[:40]}...")
    console.print(f"git repositories: {info.git_dir} (served at {info.hosts[0].git_base_url})")
    if save:
        from deploy_runs.sandbox_blocks import save_server_blocks

        for block_name in save_server_blocks(info):
            console.print(f"[green]✔[/green] saved SSHServer block [bold]{block_name}[/bold]")


@sandbox_app.command("down")
@friendly
def sandbox_down() -> None:
    """Stop what `sandbox up` started."""
    from deploy_runs import sandbox

    sandbox.down()
    console.print("sandbox stopped")


@sandbox_app.command("status")
@friendly
def sandbox_status() -> None:
    """Show the sandbox's parts and whether each is alive."""
    from deploy_runs import sandbox

    info = sandbox.status()
    for part, alive in sorted(info.running.items()):
        console.print(f"{'[green]●[/green]' if alive else '[grey58]○[/grey58]'} {part}")


@prefect_app.command("up")
@friendly
def prefect_up(port: Annotated[int, typer.Option()] = 4200,
               host: Annotated[str, typer.Option(
                   help="Address the server listens on; beyond loopback only with "
                        "PREFECT_SERVER_API_AUTH_STRING set.")] = "127.0.0.1") -> None:
    """Start a local Prefect server (SQLite) and a worker, and point the Prefect profile at it."""
    from deploy_runs.prefect_local import start_local
    from deploy_runs.prefect_server import CLIENT_AUTH_SETTING, check_bind, configured_auth_string

    # refused before anything starts (start_server checks again where it binds)
    auth_string = configured_auth_string("server") or configured_auth_string("client")
    check_bind(host, auth_string)
    url = start_local(port, host=host)
    console.print(f"Prefect API {url} — UI at {url.removesuffix('/api')}")
    if auth_string:
        console.print(f"The API asks for its auth string: set {CLIENT_AUTH_SETTING} to the same "
                      "value wherever the CLI, the Python API or a worker runs.", highlight=False)


@prefect_app.command("down")
@friendly
def prefect_down() -> None:
    """Stop the local Prefect server and worker started by `prefect up`."""
    from deploy_runs.prefect_local import stop

    console.print(f"stopped: {', '.join(stop()) or 'nothing was running'}")


@app.command()
def worker(pool: Annotated[str, typer.Option(help="The process work pool to serve.")] = "deploy-runs",
           name: Annotated[str | None, typer.Option(help="The worker's name.")] = None,
           limit: Annotated[int | None, typer.Option(
               help="At most this many flow runs at once.")] = None) -> None:
    """Serve a process work pool like `prefect worker start`, with each run's process forked
    warm (Prefect and the deploy flow already imported): runs start ~2 s sooner."""
    import asyncio

    from deploy_runs.prefect_compat.warm_worker import serve

    asyncio.run(serve(pool, name=name, limit=limit))


@app.command()
@friendly
def demo(port: Annotated[int, typer.Option(help="Port of the local Prefect server.")] = 4200) -> None:
    """Set everything up on this machine and deploy the `hello` example, live."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deploy_runs.demo import prepare
    from deploy_runs.prefect_local import start_local

    url = start_local(port)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        hello_url = prepare(console)
        run = follow(_client().deploy("hello"))
    ui = url.removesuffix("/api")
    console.print()
    console.print(f"Prefect UI:     {ui}/runs/flow-run/{run.id}")
    console.print(f"The app:        {hello_url}")
    console.print("Try:            deploy-runs runs | deploy-runs show "
                  f"{run.id} | deploy-runs deploy shop")
    raise typer.Exit(0 if run.status is RunStatus.COMPLETED else 1)


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app()


if __name__ == "__main__":
    main()
