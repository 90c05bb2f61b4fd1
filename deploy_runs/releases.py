"""An app's releases on its servers, and pruning the old ones.

A release is what a Completed run left running: one image per service (tagged by the hash of
its build inputs, `commands.image_tag`). After a Completed run, and on demand (`deploy-runs
prune`), the images and stopped containers of the app's older releases are removed from its
servers, keeping the newest `keep_releases` distinct releases (default 5, as Kamal keeps),
never the current one, and the images of failed runs since the oldest release kept (a retry
may reuse them). Images are removed by tag and without force: an image another app also tags,
or one a container still uses, stays (Docker refuses, and the log says so). A run holds its
app's slot while it prunes, so no other run of the app is between steps meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deploy_runs import commands as c
from deploy_runs.remote import CollectingSink, OutputSink, RemoteHost

DEFAULT_KEEP = 5


def releases_to_keep(runs: Sequence[tuple[str, Sequence[str]]], keep: int) -> set[str]:
    """Images to keep (pure), from the app's runs newest first as (status, images): those of
    the newest `keep` distinct releases (Completed runs; a run that changed nothing is the same
    release again), and of every failed run newer than the oldest release kept."""
    kept: set[str] = set()
    releases: list[frozenset[str]] = []
    failed: set[str] = set()
    for status, images in runs:
        if not images:
            continue
        if status != "Completed":
            if len(releases) < keep:
                failed.update(images)
            continue
        release = frozenset(images)
        if release not in releases:
            if len(releases) == keep:
                break
            releases.append(release)
        kept.update(release)
    return kept | failed


def to_remove(present: Iterable[str], keep: set[str]) -> list[str]:
    """Image tags on a server that are not to be kept (pure), in a stable order."""
    return sorted({t for t in present if t and t not in keep and not t.endswith(":<none>")})


def app_images(host: RemoteHost, app: str, sink: OutputSink) -> list[str]:
    """The app's image tags on the server (images deploy-runs built carry its app label)."""
    found = CollectingSink(sink)
    host.run(c.docker_app_images(app), found)
    return [line.strip() for line in found.stdout().splitlines() if line.strip()]


def prune_server(host: RemoteHost, app: str, keep: set[str], current: Iterable[str],
                 sink: OutputSink) -> tuple[list[str], list[str]]:
    """Remove from one server the app's stopped containers that are not one of its `current`
    containers, then its images not in `keep`: (containers removed, images removed)."""
    listing = CollectingSink(sink)
    host.run(c.docker_app_containers(app), listing)
    current = set(current)
    stopped = []
    for line in listing.stdout().splitlines():
        name, _config, _commit, state, _id = (line.split("\t") + [""] * 5)[:5]
        if name and name not in current and state in ("exited", "created", "dead"):
            stopped.append(name)
    for name in stopped:
        host.run(c.docker_remove_container(name), sink, check=False)
    removed = []
    for tag in to_remove(app_images(host, app, sink), keep):
        if host.run(c.docker_remove_image(tag), sink, check=False).exit_code == 0:
            removed.append(tag)
    return stopped, removed


def prune_app(app: str, keep: int | None = None) -> dict[str, list[str]]:
    """`deploy-runs prune`: the same clean-up on demand, from this process, on each of the
    app's servers: server -> what was removed. Blocking (SSH)."""
    from uuid import uuid4

    from blocks import Application
    from deploy_runs.prefect_compat.sync_calls import load_block
    from deploy_runs.run_record.writer import RunRecorder
    from deploy_runs.steps.context import DeployContext, servers_of
    from deploy_runs.steps.step import StepSpec

    application = load_block(Application, app)
    keep = keep or application.keep_releases
    kept = releases_to_keep(RunRecorder(uuid4()).app_releases(app), keep)
    containers = [c.container_name(app, s.name) for s in application.services]
    ctx = DeployContext(run_id=uuid4(), app=application, servers=servers_of(application))
    done: dict[str, list[str]] = {}
    with ctx:
        ctx.begin_step(StepSpec("Prune releases", limit="start"))
        for index in range(len(ctx.servers)):
            ctx.current = index
            stopped, removed = prune_server(ctx.host(), app, kept, containers, CollectingSink())
            done[ctx.label(ctx.server)] = [*(f"image {t}" for t in removed),
                                           *(f"stopped container {n}" for n in stopped)]
    return done
