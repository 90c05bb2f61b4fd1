"""Which release a rollback puts back (deploy_runs/rollback.py `choose`, pure)."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun

from deploy_runs.errors import InvalidControl
from deploy_runs.rollback import PREVIOUS, choose, target_from


def run(image: str) -> FlowRun:
    services = [{"name": "web", "image": image, "build": "rebuilt", "build_reason": "new"}]
    return FlowRun(id=uuid4(), name="shop-x", flow_id=uuid4(),
                   labels={"deploy-runs.services": json.dumps(services),
                           "deploy-runs.commit": image[-12:] * 3})


def test_the_default_is_the_release_before_the_current_one():
    runs = [run("i:3"), run("i:3"), run("i:2"), run("i:1")]  # newest first; a no-change redeploy
    assert choose(runs, "shop", PREVIOUS) is runs[2]
    assert choose(runs, "shop", str(runs[3].id)) is runs[3]


def test_no_target_says_why():
    runs = [run("i:3"), run("i:3")]
    with pytest.raises(InvalidControl, match="no earlier release than the current one"):
        choose(runs, "shop", PREVIOUS)
    with pytest.raises(InvalidControl, match="has no completed run"):
        choose([], "shop", PREVIOUS)
    with pytest.raises(InvalidControl, match="its release is the current one"):
        choose(runs, "shop", str(runs[1].id))
    with pytest.raises(InvalidControl, match="not a completed run of shop"):
        choose(runs, "shop", str(uuid4()))
    with pytest.raises(InvalidControl, match="a run id"):
        choose(runs, "shop", "yesterday")


def test_a_target_carries_the_recorded_services():
    chosen = run("i:1")
    release = json.dumps([{"name": "web", "container_port": 8080, "host_port": 18080,
                           "env": {"GREETING": "v1"}}])
    target = target_from(chosen, release)
    assert target.services[0].env == {"GREETING": "v1"} and target.images == ["i:1"]
    assert target.reason().startswith(f"rollback to run {chosen.id}, commit ")
    with pytest.raises(InvalidControl, match="recorded no release configuration"):
        target_from(chosen, None)
