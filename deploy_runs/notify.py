"""Notifications: a Prefect automation per subscription, sending through a Prefect notification
block (Slack, Discord, Microsoft Teams, a custom webhook, ...) when a deploy run ends.

Prefect does the work: its server's triggers service matches the flow run's final-state event
(`prefect.flow-run.Failed` / `Crashed` / `Cancelled` / `Completed`) against the automation,
and its actions service renders the message (a Jinja template over the flow run, read back from
the API) and sends it through the block. deploy-runs writes only the automation: which events,
which runs (the app's tag, or every deploy run), which block, and a message in the product's
words (app, status, commit and message, duration, the failed step, the first suggestion, links
to the run in the Prefect UI and to the app). The message is built from the run's labels
(`run_record/facts.py`), which never hold a secret value. Automations made here are named
`deploy-runs notify: ...` and can be seen, edited, paused or deleted in the Prefect UI under
Automations as well.

A run that crashed (its worker or process died: Prefect's Crashed, the heartbeat automation's
doing) notifies as Failed, as it is shown everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from pydantic import BaseModel, Field

from deploy_runs.errors import ConfigError, DeployRunsError
from deploy_runs.run_record.facts import RUN_TAG, app_tag, fact_label

if TYPE_CHECKING:
    from prefect.automations import Automation
    from prefect.client.orchestration import PrefectClient

PREFIX = "deploy-runs notify: "
# Product status -> the Prefect flow-run events that end a run so
STATUS_EVENTS = {
    "Completed": ("prefect.flow-run.Completed",),
    "Failed": ("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
    "Stopped": ("prefect.flow-run.Cancelled",),
}

# The message, rendered by Prefect's server (its sandboxed Jinja, `flow_run` read from the API,
# its state taken from the event). Labels are the run's facts; none holds a secret.
_STATUS = ("{% set kind = flow_run.state.type.value -%}"
           "{%- if kind in ('FAILED', 'CRASHED') -%}Failed"
           "{%- elif kind in ('CANCELLED', 'CANCELLING') -%}Stopped"
           "{%- elif kind == 'COMPLETED' -%}Completed"
           "{%- else -%}{{ flow_run.state.name }}{%- endif %}")


def _label(name: str) -> str:
    return f"flow_run.labels.get('{fact_label(name)}', '')"


SUBJECT = ("deploy-runs: {{ " + _label("app") + " or flow_run.parameters.get('app', '') }} "
           + _STATUS + "{% set commit = " + _label("commit") + " %}"
           "{% if commit %} at {{ commit[:7] }}{% endif %}")
BODY = "\n".join([
    "App: {{ " + _label("app") + " or flow_run.parameters.get('app', '') }}",
    "Status: " + _STATUS,
    "{% set commit = " + _label("commit") + " %}"
    "Commit: {% if commit %}{{ commit[:12] }} {{ " + _label("commit-message")
    + ".splitlines()[0] if " + _label("commit-message") + " else '' }}"
    "{% else %}(not fetched){% endif %}",
    "Run: {{ flow_run.name }} ({{ flow_run.id }})",
    "Duration: {{ '%.1f' % flow_run.total_run_time.total_seconds() }} s",
    "{% if " + _label("failed-step") + " %}Failed step: {{ " + _label("failed-step") + " }}\n"
    "{% endif %}"
    "{% if flow_run.state.message %}Message: {{ flow_run.state.message }}\n{% endif %}"
    "{% if " + _label("suggestion") + " %}Suggestion: {{ " + _label("suggestion") + " }}\n"
    "{% endif %}"
    "{% set link = flow_run|ui_url %}{% if link %}Prefect UI: {{ link }}{% endif %}"
    "{% if " + _label("url") + " %}\nApp URL: {{ " + _label("url") + " }}{% endif %}",
])


class Notification(BaseModel):
    """One subscription: runs of `app` (None: every app) ending with one of `on` are told to
    `block`; `id` is its Prefect automation's."""

    id: UUID = Field(description="The Prefect automation's id.")
    name: str = Field(description="The Prefect automation's name.")
    app: str | None = Field(description="The application; None: every application.")
    on: list[str] = Field(description="Run statuses that notify: Completed, Failed, Stopped.")
    block: str = Field(description="The Prefect notification block, TYPE/NAME.")
    enabled: bool = Field(True, description="False while paused in the Prefect UI.")

    @classmethod
    def from_automation(cls, automation: Automation) -> Notification | None:
        match = _NAME.fullmatch(automation.name)
        if match is None or automation.id is None:
            return None
        app = None if match["app"] == "all apps" else match["app"]
        return cls(id=automation.id, name=automation.name, app=app,
                   on=match["on"].split(","), block=match["block"],
                   enabled=automation.enabled)


_NAME = re.compile(re.escape(PREFIX) + r"(?P<app>.+) on (?P<on>[A-Za-z,]+) via (?P<block>\S+/\S+)")


class NotificationError(DeployRunsError):
    """A notification that cannot be set up (no such block, no such subscription)."""


def parse_statuses(on: str | Iterable[str]) -> list[str]:
    """`Failed,Stopped` (or a list) -> the product statuses, validated (ConfigError names the
    field)."""
    items = [s.strip() for s in (on.split(",") if isinstance(on, str) else on) if s.strip()]
    by_lower = {k.lower(): k for k in STATUS_EVENTS}
    unknown = [s for s in items if s.lower() not in by_lower]
    if unknown or not items:
        raise ConfigError([f"on: {', '.join(unknown) or '(empty)'}: expected one or more of "
                           f"{', '.join(STATUS_EVENTS)}"])
    return list(dict.fromkeys(by_lower[s.lower()] for s in items))


def parse_block(block: str) -> tuple[str, str]:
    """`TYPE/NAME` (a block type slug and a block name, as Prefect's `prefect block ls` shows
    them) -> (slug, name)."""
    slug, _, name = block.partition("/")
    if not slug or not name or "/" in name:
        raise ConfigError([f"block: {block!r}: expected TYPE/NAME of a Prefect notification "
                           "block, e.g. slack-webhook/ops or custom-webhook/team"])
    return slug, name


def automation_name(app: str | None, statuses: list[str], block: str) -> str:
    return f"{PREFIX}{app or 'all apps'} on {','.join(statuses)} via {block}"


def build_automation(app: str | None, statuses: list[str], block: str,
                     block_document_id: object) -> Automation:
    """The automation for a subscription (pure: nothing is sent)."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    related = ({"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{app_tag(app)}"}
               if app else
               {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{RUN_TAG}"})
    events = {e for s in statuses for e in STATUS_EVENTS[s]}
    return Automation(
        name=automation_name(app, statuses, block),
        description=f"deploy-runs: tell {block} when a run of "
                    f"{app or 'any application'} ends {' or '.join(statuses)}.",
        trigger=EventTrigger(
            expect=events,
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(related),
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT,
                                  body=BODY)],
    )


async def add(client: PrefectClient, app: str | None, on: str | Iterable[str],
              block: str) -> Notification:
    """Subscribe `block` to the runs of `app` (None: every app) that end with one of `on`."""
    from prefect.exceptions import ObjectNotFound

    statuses = parse_statuses(on)
    slug, name = parse_block(block)
    try:
        document = await client.read_block_document_by_name(name, slug)
    except ObjectNotFound:
        raise NotificationError(f"no Prefect block {slug}/{name}: create it in the Prefect UI "
                                "(Blocks) or in Python, e.g. "
                                f"CustomWebhookNotificationBlock(...).save({name!r})") from None
    capabilities = set(document.block_schema.capabilities or []) if document.block_schema else set()
    if "notify" not in capabilities:
        raise NotificationError(f"block {slug}/{name} cannot send notifications (its type has "
                                "no `notify`): use a notification block (slack-webhook, "
                                "discord-webhook, ms-teams-webhook, custom-webhook, ...)")
    automation = build_automation(app, statuses, block, document.id)
    for other in await _ours(client):
        if other.name == automation.name:  # the same subscription again: one automation
            return _notification(other)
    return _notification(await automation.acreate())


def _notification(automation: Automation) -> Notification:
    found = Notification.from_automation(automation)
    assert found is not None, automation.name
    return found


async def _ours(client: PrefectClient) -> list[Automation]:
    from prefect.automations import Automation

    found = await client.read_automations()
    return [Automation.model_validate(a.model_dump()) for a in found
            if a.name.startswith(PREFIX)]


async def listing(client: PrefectClient, app: str | None = None) -> list[Notification]:
    """The subscriptions (automations made here), of one app (and those of every app) or
    all."""
    found = [n for a in await _ours(client) if (n := Notification.from_automation(a))]
    return [n for n in found if app is None or n.app in (app, None)]


async def remove(client: PrefectClient, which: str) -> Notification:
    """Remove a subscription, by its automation's id or name."""
    for automation in await _ours(client):
        if which in (str(automation.id), automation.name):
            await client.delete_automation(automation.id)
            return _notification(automation)
    raise NotificationError(f"no deploy-runs notification {which!r}: see `deploy-runs notify "
                            "list`")
