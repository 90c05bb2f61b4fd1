"""Rollback: a new run (trigger `rollback`) that puts an earlier release of an app back.

A release is a Completed run's images (one per service) and its runtime configuration (the
services as they were: ports, env, health checks, limits; recorded by the run as the flow-run
input `deploy-runs-release`); secrets are the app's as they are now. A rollback run checks that
every image of that release is still on every server: then `Fetch source` and `Build images`
are Skipped ("rollback to run X, commit Y: images kept") and `Start application` switches to the
kept images; if one was pruned, the run says which, and fetches and builds that commit again.

The default target is the release before the current one (the newest Completed run whose images
differ from the current release's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from blocks import Service
from deploy_runs import commands as c
from deploy_runs.errors import InvalidControl
from deploy_runs.models import ServiceRelease
from deploy_runs.run_record.facts import RELEASE_KEY, RUN_TAG, app_tag, fact_label, services_from_labels

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from deploy_runs.remote import OutputSink
    from deploy_runs.steps.context import DeployContext

PREVIOUS = "previous"  # the rollback target that means "the release before the current one"


@dataclass
class Target:
    """The release a rollback puts back."""

    run_id: UUID
    commit: str
    commit_message: str
    services: list[Service]
    releases: list[ServiceRelease] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return [r.image for r in self.releases]

    def reason(self) -> str:
        return f"rollback to run {self.run_id}, commit {self.commit[:12]}: images kept"


def _images(run: FlowRun) -> frozenset[str]:
    return frozenset(r.image for r in services_from_labels(run.labels or {}))


def choose(runs: list[FlowRun], app: str, to: str) -> FlowRun:
    """The target among the app's Completed runs, newest first (pure): `to` is a run id, or
    PREVIOUS. InvalidControl says why there is none."""
    if not runs:
        raise InvalidControl(f"cannot roll back {app}: it has no completed run")
    current = _images(runs[0])
    if to == PREVIOUS:
        earlier = next((r for r in runs[1:] if _images(r) and _images(r) != current), None)
        if earlier is None:
            raise InvalidControl(f"cannot roll back {app}: no earlier release than the current "
                                 f"one (run {runs[0].id})")
        return earlier
    try:
        wanted = UUID(to)
    except ValueError:
        raise InvalidControl(f"cannot roll back to {to!r}: a run id (UUID) or "
                             f"{PREVIOUS!r}") from None
    found = next((r for r in runs if r.id == wanted), None)
    if found is None:
        raise InvalidControl(f"cannot roll back {app} to run {to}: not a completed run of {app}")
    if _images(found) == current:
        raise InvalidControl(f"cannot roll back {app} to run {to}: its release is the current "
                             "one")
    return found


def target_from(run: FlowRun, release: str | None) -> Target:
    """The Target of a chosen run, from its labels and its recorded release (InvalidControl
    when it has none: runs before deploy-runs recorded releases)."""
    if not release:
        raise InvalidControl(f"cannot roll back to run {run.id}: it recorded no release "
                             "configuration")
    labels = run.labels or {}
    services = [Service.model_validate(s) for s in json.loads(release)]
    return Target(run.id, str(labels.get(fact_label("commit")) or ""),
                  str(labels.get(fact_label("commit-message")) or ""), services,
                  services_from_labels(labels))


def completed_filter(app: str) -> Any:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    return FlowRunFilter(tags=FlowRunFilterTags(all_=[RUN_TAG, app_tag(app)]),
                         state=FlowRunFilterState(type=FlowRunFilterStateType(
                             any_=[StateType.COMPLETED])))


def find_target(app: str, to: str, exclude: UUID | None = None) -> Target:
    """The release to put back (blocking; the flow's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(flow_run_filter=completed_filter(app),
                                                 sort=FlowRunSort.END_TIME_DESC, limit=200)
                if r.id != exclude]
        chosen = choose(runs, app, to)
        try:
            release = client.read_flow_run_input(chosen.id, RELEASE_KEY)
        except ObjectNotFound:
            release = None
    return target_from(chosen, release)


async def afind_target(app: str, to: str) -> Target:
    """`find_target` for the Python API (async)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=completed_filter(app),
                                           sort=FlowRunSort.END_TIME_DESC, limit=200)
        chosen = choose(runs, app, to)
        try:
            release = await client.read_flow_run_input(chosen.id, RELEASE_KEY)
        except ObjectNotFound:
            release = None
    return target_from(chosen, release)


def missing_images(ctx: DeployContext, target: Target, sink: OutputSink) -> list[str]:
    """Images of the target release missing on any of the app's servers (pruned)."""
    from deploy_runs.remote import CollectingSink

    missing: list[str] = []
    for index in range(len(ctx.servers)):
        ctx.current = index
        found = CollectingSink(sink)
        ctx.host().run(c.docker_image_tags(target.images), found, check=False)
        present = {tag for _, text in found.lines for tag in _tags(text)}
        missing += [t for t in target.images if t not in present and t not in missing]
    ctx.current = 0
    return missing


def _tags(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


def put_back(ctx: DeployContext, target: Target) -> None:
    """The context of a rollback whose images are all there: the target's commit, images and
    releases (reused, with the reason)."""
    ctx.commit, ctx.commit_message = target.commit, target.commit_message
    for index in range(len(ctx.servers)):
        ctx.current = index
        for release in target.releases:
            ctx.images[release.name] = release.image
            ctx.releases[release.name] = ServiceRelease(
                name=release.name, image=release.image, build="reused",
                build_reason=target.reason())
    ctx.current = 0
