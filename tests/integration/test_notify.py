"""Notifications through Prefect: a subscription is a Prefect automation that sends through a
real Prefect notification block (the custom webhook block) to a real HTTP receiver, one message
per matching run, in the product's words; none for a status not subscribed. (A crashed run
notifying as Failed: test_never_hang.py.)"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from deploy_runs import RunStatus
from deploy_runs.errors import ConfigError
from deploy_runs.notify import NotificationError

from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

FAILING = {"Dockerfile": "FROM busybox:latest\nRUN echo compiling && exit 3\n"}


def test_a_subscribed_status_sends_one_message_and_others_none(client, make_app,
                                                               webhook_receiver):
    path, sentinel = f"/team-{uuid.uuid4().hex[:6]}", f"/sentinel-{uuid.uuid4().hex[:6]}"
    block, other = webhook_receiver.block(path), webhook_receiver.block(sentinel)
    broken, fine = make_app("hello", files=FAILING), make_app("hello")
    made = client.add_notification(broken.name, "Failed", block)
    client.add_notification(fine.name, ["Failed", "Stopped"], block)  # fine completes: none
    client.add_notification(fine.name, "Completed", other)  # tells us the automations ran
    assert client.add_notification(broken.name, "failed", block).id == made.id  # no second one
    assert {n.name for n in client.notifications(broken.name)} == {made.name}

    failed = client.wait(client.deploy(broken.name).id, timeout=180)
    done = client.wait(client.deploy(fine.name).id, timeout=180)
    assert (failed.status, done.status) == (RunStatus.FAILED, RunStatus.COMPLETED)

    wait_for(lambda: webhook_receiver.at(sentinel), 90, "the Completed notification")
    messages = wait_for(lambda: webhook_receiver.at(path), 90, "the Failed notification")
    assert len(messages) == 1, messages  # fine's Completed run was not subscribed on `path`
    subject, body = messages[0]["subject"], messages[0]["body"]
    assert subject == f"deploy-runs: {broken.name} Failed at {failed.commit[:7]}"
    lines = body.splitlines()
    assert f"App: {broken.name}" in lines and "Status: Failed" in lines
    assert f"Commit: {failed.commit[:12]} {broken.name}: first commit" in lines
    assert "Failed step: Build images" in lines
    assert any(line.startswith("Duration: ") and line.endswith(" s") for line in lines)
    assert f"/runs/flow-run/{failed.id}" in body, body
    assert any(line.startswith("Suggestion: ") for line in lines) == bool(failed.error.suggestions)
    assert webhook_receiver.at(sentinel)[0]["subject"].startswith(f"deploy-runs: {fine.name} "
                                                                  "Completed")

    gone = client.remove_notification(made.id)
    assert gone.id == made.id and client.notifications(broken.name) == []


def test_a_bad_subscription_is_refused_with_the_reason(client, make_app):
    app = make_app("hello")
    with pytest.raises(ConfigError, match="on: Crashed"):
        client.add_notification(app.name, "Crashed", "custom-webhook/x")
    with pytest.raises(NotificationError, match="no Prefect block custom-webhook/none"):
        client.add_notification(app.name, "Failed", "custom-webhook/none")
    with pytest.raises(NotificationError, match="cannot send notifications"):
        client.add_notification(app.name, "Failed", "deploy-runs-application/" + app.name)


def test_the_cli_adds_lists_and_removes(make_app, webhook_receiver):
    app = make_app("hello")
    block = webhook_receiver.block("/cli")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy_runs.cli", "notify", *args],
                              capture_output=True, text=True, timeout=120)

    added = cli("add", app.name, "--on", "Failed,Stopped", "--block", block)
    assert added.returncode == 0, added.stderr
    listed = cli("list", app.name)
    assert f"{app.name} on Failed,Stopped via {block}" in listed.stdout
    automation_id = listed.stdout.split()[0]
    assert cli("remove", automation_id).returncode == 0
    assert app.name not in cli("list", app.name).stdout
    refused = cli("add", "--on", "Failed", "--block", block)
    assert refused.returncode == 2 and "name an application, or give --all" in refused.stderr
