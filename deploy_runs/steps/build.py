"""Build images: build a service's image only when its build inputs changed.

A service's build inputs are its context directory and Dockerfile as git stores them at the
commit (their object hashes: content, not timestamps) and its build arguments. Images are
tagged by a hash of those inputs, so an unchanged service finds its image already on the
server and is not built at all; a changed one is built with the engine's layer cache, so only
the layers after the change are rebuilt. Each decision is recorded with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

from blocks import Service
from deploy_runs import commands as c
from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.models import ServiceRelease
from deploy_runs.remote import Cancel, CollectingSink, RemoteHost
from deploy_runs.run_record.facts import services_from_labels
from deploy_runs.run_record.writer import RunRecorder
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.parallel import side_by_side
from deploy_runs.steps.step import StepSpec, step

NAME = "Build images"


def _carry(ctx: DeployContext, labels: dict, record: RunRecorder) -> None:
    """Reused by a retry: the images the earlier run built (or reused)."""
    for release in services_from_labels(labels):
        ctx.releases[release.name] = release
        ctx.images[release.name] = release.image
    record.services(ctx.merged_releases())


SPEC = StepSpec(
    NAME, limit="build",
    inputs=lambda app, commit: [s.model_dump(include={"name", "context", "dockerfile",
                                                      "build_args"}) for s in app.services],
    carry=_carry)


def build_inputs_hash(service: Service, context_object: str, dockerfile_object: str) -> str:
    inputs = {"context": service.context, "context_object": context_object,
              "dockerfile": service.dockerfile, "dockerfile_object": dockerfile_object,
              "build_args": dict(sorted(service.build_args.items()))}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _stdout(host: RemoteHost, command: c.Command, log: StepLog, check: bool = True) -> list[str]:
    sink = CollectingSink(log)
    result = host.run(command, sink, check=check)
    return sink.stdout().splitlines() if result.exit_code == 0 else []


def existing_images(host: RemoteHost, tags: list[str], log: StepLog) -> set[str]:
    """Which of `tags` the server's engine has. The engine's "No such image" answers for the
    others are expected and kept out of the step's log (the step says what it builds)."""
    command = c.docker_image_tags(tags)
    log.command(str(command))
    sink = CollectingSink()
    result = host.run(command, sink, check=False, quiet=True)
    trouble = [text for stream, text in sink.lines
               if stream == "stderr" and "no such image" not in text.lower()]
    if result.exit_code != 0 and trouble:
        raise CommandFailed(result.command, result.exit_code, result.tail)
    found: set[str] = set()
    for line in sink.stdout().splitlines():
        with contextlib.suppress(ValueError):
            found.update(json.loads(line) or [])
    return found & set(tags)


def previous_commits(host: RemoteHost, app: str, log: StepLog) -> dict[str, str]:
    """The commit each service's current container was deployed from."""
    commits = {}
    for line in _stdout(host, c.docker_app_containers(app), log):
        name, _config, commit, _state, _id = (line.split("\t") + [""] * 5)[:5]
        if commit:
            commits[name] = commit
    return commits


def why_rebuilt(host: RemoteHost, ctx: DeployContext, service: Service, previous: str | None,
                log: StepLog) -> str:
    if not previous:
        return "first build"
    changed = _stdout(host, c.git_changed_files(
        ctx.layout.repo, previous, ctx.commit or "", [service.context, service.dockerfile]),
        log, check=False)
    if service.dockerfile in changed:
        return "Dockerfile changed"
    if changed:
        return f"context changed ({len(changed)} file{'s' if len(changed) != 1 else ''})"
    return "build arguments changed or image not on the server"


def build_input_objects(host: RemoteHost, ctx: DeployContext, revs: list[str],
                        log: StepLog) -> list[str]:
    """The git objects of every service's context and Dockerfile; a missing one is named
    with the setting that points at it."""
    sink = CollectingSink(log)
    result = host.run(c.git_rev_parse(ctx.layout.repo, revs), sink, check=False)
    if result.exit_code == 0:
        return sink.stdout().splitlines()
    short = (ctx.commit or "")[:7]
    for service in ctx.app.services:
        for setting, path, what in (("dockerfile", service.dockerfile, "Dockerfile"),
                                    ("context", service.context, "build context")):
            if path not in (".", "") and any(f"path '{path}' does not exist" in line
                                             for line in result.tail):
                raise StepFailed(f"services[{service.name}].{setting}: {what} {path} does not "
                                 f"exist in the repository at commit {short}",
                                 evidence=result.tail)
    raise CommandFailed(result.command, result.exit_code, result.tail)


def refuse_links_out(host: RemoteHost, ctx: DeployContext, log: StepLog) -> None:
    """Before anything is built: no symbolic link of the checkout may point outside it. A
    build follows a link named as its context or Dockerfile, and a repository could commit
    `web -> ../../other-app` or a link into the deploy user's home and serve what it finds
    there (another app's files and env files, ~/.ssh)."""
    sink = CollectingSink(log)
    repo = ctx.layout.repo
    host.run(c.symbolic_links(repo), sink)
    leaving = c.links_leaving(repo, sink.stdout())
    if leaving:
        named = ", ".join(f"{path} -> {target}" for path, target in leaving[:5])
        more = f" (and {len(leaving) - 5} more)" if len(leaving) > 5 else ""
        raise StepFailed(
            f"the repository has symbolic links pointing outside it, which a build could "
            f"follow to files of the server: {named}{more}; nothing was built. Commit the "
            "files themselves, or links that stay inside the repository.",
            evidence=[f"{path} -> {target}" for path, target in leaving])


@step(SPEC)
def build_images(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    host = ctx.host()
    app, commit = ctx.app, ctx.commit
    assert commit, "Fetch source runs before Build images"

    revs = [rev for s in app.services
            for rev in (c.tree_rev(commit, s.context), c.tree_rev(commit, s.dockerfile))]
    objects = build_input_objects(host, ctx, revs, log)
    tags = [c.image_tag(app.name, s.name, build_inputs_hash(s, objects[2 * i], objects[2 * i + 1]))
            for i, s in enumerate(app.services)]
    existing = existing_images(host, tags, log)
    previous: dict[str, str] | None = None  # read only when something is to be built
    to_build: list[tuple[Service, str, str]] = []
    for service, tag in zip(app.services, tags, strict=True):
        ctx.images[service.name] = tag
        if tag in existing:
            log.info("%s: build inputs unchanged; reusing image %s", service.name, tag)
            ctx.releases[service.name] = ServiceRelease(
                name=service.name, image=tag, build="reused", build_reason="unchanged")
            continue
        if previous is None:
            refuse_links_out(host, ctx, log)
            previous = previous_commits(host, app.name, log)
        reason = why_rebuilt(host, ctx, service,
                             previous.get(c.container_name(app.name, service.name)), log)
        to_build.append((service, tag, reason))
    parallel = min(len(to_build), app.build_parallelism or len(to_build))
    if parallel <= 1:
        for service, tag, reason in to_build:
            _build(ctx, host, service, tag, reason, log)
    else:
        log.info("building %d images side by side (%d at a time): %s", len(to_build), parallel,
                 ", ".join(s.name for s, _, _ in to_build))
        side_by_side(to_build, parallel, lambda item, own, cancel: _build(
            ctx, host, *item, own, cancel), lambda item: item[0].name)
    RunRecorder(ctx.run_id).services(ctx.merged_releases())
    return dict(ctx.images)


def _build(ctx: DeployContext, host: RemoteHost, service: Service, tag: str, reason: str,
           log: StepLog, cancel: Cancel | None = None) -> None:
    app = ctx.app
    log.info("%s: %s; building %s", service.name, reason, tag)
    host.run(c.docker_build(tag, ctx.layout.in_repo(service.dockerfile),
                            ctx.layout.in_repo(service.context),
                            c.labels(app=app.name, service=service.name), service.build_args),
             log, cancel=cancel)
    ctx.releases[service.name] = ServiceRelease(
        name=service.name, image=tag, build="rebuilt", build_reason=reason)
