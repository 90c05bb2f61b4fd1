"""A step is declared once, in its own module (StepSpec); the planned list, retry's input hashes,
time limits and diagnosis scope derive from the declarations (docs/architecture.md: a new step
is one module plus one PIPELINE entry)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

from blocks import Application, Service, SSHServer
from blocks.application import Timeouts
from deploy_runs.diagnosis import diagnose
from deploy_runs.inputs import step_inputs
from deploy_runs.steps import PIPELINE, PLANNED_STEPS, STEPS, StepSpec, spec_of

# the hashes the per-step inputs gave before they moved into the steps' declarations: runs
# recorded then must still be reused by a retry now
RECORDED = {"Provision server": "b6b0b655d47eb755", "Fetch source": "565e9993128e078f",
            "Build images": "5d977ade48a45ee9", "Start application": "a31a140b6aa292f2",
            "Health check": "09d5628793b48c5d"}


def app() -> Application:
    server = SSHServer(host="10.0.0.5", username="deploy", private_key="k",
                       host_key="ssh-ed25519 AAAA")
    return Application(name="shop", repository="git://h/shop.git", server=server,
                       services=[Service(name="web", container_port=8080, host_port=80)],
                       secret_env={"web": {"TOKEN": "s3cret"}})


def test_every_step_is_declared_and_its_limit_is_a_setting():
    assert [s.name for s in STEPS] == list(PLANNED_STEPS) == [t.name for t in PIPELINE]
    for spec in STEPS:
        assert spec.limit in Timeouts.model_fields, spec
        assert spec_of(spec.name) is spec
    assert spec_of("no such step") is None


def test_input_hashes_are_those_recorded_before_the_declarations():
    # an app that does not use the proxy deploys as it did then
    hashes = step_inputs(app().model_copy(update={"proxy": False}), "c1")
    assert {k: hashes[k] for k in RECORDED} == RECORDED
    # behind the proxy, Start application works otherwise: a run recorded before is not
    # reused for it (nor for Health check, whose hash chains after it)
    proxied = step_inputs(app(), "c1")
    assert [k for k in RECORDED if proxied[k] != RECORDED[k]] == [
        "Start application", "Health check"]


def test_a_scoped_rule_applies_only_in_the_step_that_declares_it():
    text = "ConnectionRefusedError: [Errno 111] Connection refused"
    assert [s.kind for s in diagnose(text, "Provision server")] == ["server-unreachable"]
    assert diagnose(text, "Build images") == []
    assert [s.kind for s in diagnose(text)] == ["server-unreachable"]  # no step: every rule


def test_a_new_step_is_one_module_and_one_entry(tmp_path):
    """The recipe: a module declaring its step, and its task in the pipeline; its input hash
    then chains after the others, and its limit defaults to the whole run's."""
    module = tmp_path / "notify_step.py"
    module.write_text(textwrap.dedent('''
        from deploy_runs.steps.step import StepSpec, step

        SPEC = StepSpec("Notify team", inputs=lambda app, commit: {"channel": "#deploys"})

        @step(SPEC)
        def notify_team(ctx):
            return None
    '''))
    spec = importlib.util.spec_from_file_location("notify_step", module)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules["notify_step"] = loaded
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.modules.pop("notify_step", None)
    pipeline = (*PIPELINE, loaded.notify_team)
    steps = tuple(t.spec for t in pipeline)
    assert isinstance(loaded.notify_team.spec, StepSpec) and loaded.SPEC.limit == "run"
    before, after = step_inputs(app(), "c1"), step_inputs(app(), "c1", steps)
    assert {k: after[k] for k in before} == before and "Notify team" in after
    assert loaded.notify_team.name == "Notify team"
