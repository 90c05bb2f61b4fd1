"""Fetch source: bring the server's checkout of the repository to the requested ref
(default: the head of the app's branch, i.e. the latest code) and record the commit."""

from __future__ import annotations

from deploy_runs import commands as c
from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.remote import CollectingSink
from deploy_runs.run_record.facts import fact_label
from deploy_runs.run_record.writer import RunRecorder
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import StepSpec, step

NAME = "Fetch source"


def _carry(ctx: DeployContext, labels: dict, record: RunRecorder) -> None:
    """Reused by a retry: the commit the earlier run fetched."""
    commit = str(labels.get(fact_label("commit")) or "") or None
    if commit:
        ctx.commit = commit
        ctx.commit_message = str(labels.get(fact_label("commit-message")) or "")
        record.commit(ctx.app, commit, ctx.commit_message)


SPEC = StepSpec(NAME, limit="fetch",
                inputs=lambda app, commit: {"repository": app.repository, "commit": commit},
                carry=_carry)


@step(SPEC)
def fetch_source(ctx: DeployContext) -> dict[str, str]:
    log = StepLog()
    host = ctx.host()
    app, repo = ctx.app, ctx.layout.repo

    # a redeploy finds the checkout: fetching the app's repository into it is the first command
    fetched = host.run(c.git_fetch(repo, app.repository), log, check=False)
    if fetched.exit_code != 0:
        if host.run(c.git_is_repo(repo), log, check=False).exit_code == 0:
            raise CommandFailed(fetched.command, fetched.exit_code, fetched.tail)
        host.run(c.make_dirs(ctx.layout.root), log)
        host.run(c.git_clone(app.repository, repo), log)
        host.run(c.git_fetch(repo, app.repository), log)

    # on a second server, the commit the first one resolved (the branch may have moved since)
    wanted = ctx.commit or ctx.ref or app.branch
    commit = None
    for candidate in (f"origin/{wanted}", wanted):
        found = CollectingSink(log)
        if host.run(c.git_resolve(repo, candidate), found,
                    check=False).exit_code == 0:
            commit = found.stdout().strip()
            break
    if not commit:
        raise StepFailed(f"git ref {wanted!r} was not found in {app.repository} "
                         "(no such branch, tag or commit)")

    host.run(c.git_checkout(repo, commit), log)
    host.run(c.git_clean(repo), log)
    info = CollectingSink(log)
    host.run(c.git_commit_info(repo, commit), info)
    sha, _, subject = info.stdout().partition("\n")
    ctx.commit, ctx.commit_message = sha.strip(), subject.strip()
    log.info("deploying commit %s: %s", ctx.commit, ctx.commit_message)
    RunRecorder(ctx.run_id).commit(app, ctx.commit, ctx.commit_message)
    return {"commit": ctx.commit, "commit_message": ctx.commit_message}
