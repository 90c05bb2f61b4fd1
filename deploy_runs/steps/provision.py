"""Provision server: check the server has what the app needs and make the app's directories.

Skipped when the server was provisioned for this app with the same inputs and still has what
provisioning checked (the marker file, a Docker engine the user can use, git).
"""

from __future__ import annotations

import hashlib
import json

from prefect.states import Completed, State

from deploy_runs import commands as c
from deploy_runs.errors import StepFailed
from deploy_runs.remote import CollectingSink
from deploy_runs.status import SKIPPED_STATE_NAME
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext
from deploy_runs.steps.step import StepSpec, step

NAME = "Provision server"
SPEC = StepSpec(
    NAME, limit="provision",
    inputs=lambda app, commit: {"app": app.name, "host": app.server.host,
                                "port": app.server.port, "user": app.server.username,
                                **({"more_servers": app.more_servers} if app.more_servers else {})},
    diagnosis=("server-unreachable",))  # a socket error while connecting: only here
# 2: env files moved into a 0700 secrets directory (those of version 1 are removed)
PROVISIONING_VERSION = 2


def provisioning_fingerprint(ctx: DeployContext, docker_version: str, git_version: str) -> str:
    """A hash of everything provisioning depends on - what it is asked to set up and the
    server software it found; a change to any of them means provisioning runs again."""
    inputs = {
        "version": PROVISIONING_VERSION,
        "app": ctx.app.name,
        "user": ctx.server.username,
        "root": ctx.layout.root,
        "docker": docker_version,
        "git": git_version,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@step(SPEC)
def provision_server(ctx: DeployContext) -> State | None:
    log = StepLog()
    host = ctx.host()
    for note in host.notes:
        log.warning(note)
    layout = ctx.layout
    marker = CollectingSink(log)
    done = host.run(c.read_file(layout.provisioned_marker), marker, check=False)

    docker_out = CollectingSink(log)
    docker = host.run(c.docker_server_version(), docker_out, check=False)
    if docker.exit_code != 0:
        raise StepFailed(
            f"the Docker engine is not usable by {ctx.server.username} on the server "
            f"(`{docker.command}` exited with {docker.exit_code}): install Docker, start it, "
            "and add the user to the `docker` group",
            evidence=docker.tail,
        )
    git_out = CollectingSink(log)
    git = host.run(c.git_version(), git_out, check=False)
    if git.exit_code != 0:
        raise StepFailed("git is not installed on the server: install it (e.g. apt-get "
                         "install git)", evidence=git.tail)
    wanted = provisioning_fingerprint(ctx, docker_out.stdout().strip(), git_out.stdout().strip())
    if done.exit_code == 0 and marker.stdout().strip() == wanted:
        return Completed(name=SKIPPED_STATE_NAME,
                         message="Already provisioned with the same inputs.")

    host.run(c.make_dirs(layout.root), log)
    host.run(c.make_private_dir(layout.secrets_dir), log)
    # env files of provisioning version 1 lay beside the checkout, in a readable directory
    host.run(c.remove_env_files(layout.root), log)
    host.write_file(layout.provisioned_marker, wanted.encode() + b"\n", mode=0o644)
    log.info("recorded provisioning fingerprint %s in %s", wanted[:12], layout.provisioned_marker)
    return None
