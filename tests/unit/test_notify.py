"""Notifications (deploy_runs/notify.py): the automation a subscription makes, and its message
rendered by Prefect's own template renderer over flow runs as its server reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect.server.schemas.core import FlowRun
from prefect.server.schemas.states import State, StateType
from prefect.server.utilities.user_templates import render_user_template_sync
from prefect.settings import PREFECT_UI_URL, temporary_settings

from deploy_runs.errors import ConfigError
from deploy_runs.notify import BODY, SUBJECT, build_automation, parse_block, parse_statuses


def flow_run(kind: StateType, labels: dict[str, str], message: str | None = None) -> FlowRun:
    return FlowRun(id=uuid4(), name="shop-1a2b3c4", flow_id=uuid4(), parameters={"app": "shop"},
                   labels=labels, total_run_time=timedelta(seconds=12.34),
                   start_time=datetime.now(UTC) - timedelta(seconds=13),
                   state=State(type=kind, name=kind.value.title(), message=message))


def render(run: FlowRun) -> tuple[str, str]:
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.utilities.user_templates import register_user_template_filters

    register_user_template_filters(all_filters)
    with temporary_settings(updates={PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        return (render_user_template_sync(SUBJECT, {"flow_run": run}),
                render_user_template_sync(BODY, {"flow_run": run}))


FACTS = {"deploy-runs.app": "shop", "deploy-runs.commit": "a" * 40,
         "deploy-runs.commit-message": "Fix the cart\n\nlong body", "deploy-runs.url":
         "https://shop.example.com"}


def test_a_failed_run_says_what_broke_and_what_to_do():
    run = flow_run(StateType.FAILED, {
        **FACTS, "deploy-runs.failed-step": "Build images",
        "deploy-runs.suggestion": "The Dockerfile has a syntax error: fix line 3"},
        "Build images failed: unknown instruction: RUNN")
    subject, body = render(run)
    assert subject == "deploy-runs: shop Failed at aaaaaaa"
    lines = body.splitlines()
    assert "App: shop" in lines and "Status: Failed" in lines
    assert "Commit: aaaaaaaaaaaa Fix the cart" in lines
    assert "Duration: 12.3 s" in lines
    assert "Failed step: Build images" in lines
    assert "Message: Build images failed: unknown instruction: RUNN" in lines
    assert "Suggestion: The Dockerfile has a syntax error: fix line 3" in lines
    assert f"/runs/flow-run/{run.id}" in body and "App URL: https://shop.example.com" in lines


def test_a_crashed_run_is_failed_and_a_cancelled_one_stopped():
    assert "Status: Failed" in render(flow_run(StateType.CRASHED, FACTS))[1]
    assert render(flow_run(StateType.CANCELLED, FACTS))[0].startswith("deploy-runs: shop Stopped")
    subject, body = render(flow_run(StateType.COMPLETED, {"deploy-runs.app": "shop"}))
    assert subject == "deploy-runs: shop Completed"
    assert "Commit: (not fetched)" in body and "Failed step" not in body and "App URL" not in body


def test_statuses_and_blocks_are_checked():
    assert parse_statuses("failed, Stopped") == ["Failed", "Stopped"]
    assert parse_statuses(["Completed", "Completed"]) == ["Completed"]
    for bad in ("Crashed", "", "Failed,Nope"):
        with pytest.raises(ConfigError, match=r"on: .*expected one or more of Completed"):
            parse_statuses(bad)
    assert parse_block("custom-webhook/team") == ("custom-webhook", "team")
    for bad in ("team", "/team", "a/b/c"):
        with pytest.raises(ConfigError, match="block: "):
            parse_block(bad)


def test_the_automation_matches_the_apps_runs_ending_so():
    automation = build_automation("shop", ["Failed", "Stopped"], "custom-webhook/team", uuid4())
    trigger = automation.trigger
    assert trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                              "prefect.flow-run.Cancelled"}
    assert trigger.match_related.root == {"prefect.resource.role": "tag",
                                     "prefect.resource.id": "prefect.tag.app:shop"}
    assert automation.name == "deploy-runs notify: shop on Failed,Stopped via custom-webhook/team"
    every = build_automation(None, ["Completed"], "slack-webhook/ops", uuid4())
    assert every.trigger.match_related.root["prefect.resource.id"] == "prefect.tag.deploy-runs"
