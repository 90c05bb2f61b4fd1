"""Pure parts around a run's end: step-input hashes (what a retry may reuse), the summary
artifact's Markdown, and the container state in words."""

from __future__ import annotations

from uuid import uuid4

from blocks import Application, Service, SSHServer
from deploy_runs.inputs import reusable_steps, step_inputs
from deploy_runs.models import Failure, Run, ServiceRelease, Step, Suggestion
from deploy_runs.run_record.summary import summary_markdown
from deploy_runs.status import RunStatus, StepStatus
from deploy_runs.steps import PLANNED_STEPS
from deploy_runs.steps.health import describe_state


def app(secret: str = "s3cret", **service: object) -> Application:
    server = SSHServer(host="10.0.0.5", username="deploy", private_key="k", host_key="ssh-ed25519 AAAA")
    return Application(name="shop", repository="git://h/shop.git", server=server,
                       services=[Service(**{"name": "web", "container_port": 8080,
                                            "host_port": 80, **service})],
                       secret_env={"web": {"TOKEN": secret}})


def changed_steps(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [step for step in PLANNED_STEPS if a[step] != b[step]]


def test_a_change_invalidates_its_step_and_every_later_one():
    base = step_inputs(app(), "c1")
    assert step_inputs(app(), "c1") == base
    assert changed_steps(base, step_inputs(app(), "c2")) == list(PLANNED_STEPS[1:])
    assert changed_steps(base, step_inputs(app(dockerfile="D2"), "c1")) == list(PLANNED_STEPS[2:])
    assert changed_steps(base, step_inputs(app(env={"A": "1"}), "c1")) == list(PLANNED_STEPS[3:])
    assert changed_steps(base, step_inputs(app(health_check={"path": "/up"}), "c1")) == \
        ["Health check"]
    assert changed_steps(base, step_inputs(app(secret="changed"), "c1")) == list(PLANNED_STEPS[3:])
    assert "s3cret" not in str(base)


def test_reuse_stops_at_the_first_step_not_done_or_changed():
    before = step_inputs(app(), "c1")
    completed = set(PLANNED_STEPS[:3])
    assert reusable_steps(PLANNED_STEPS, completed, before, before) == list(PLANNED_STEPS[:3])
    now = step_inputs(app(dockerfile="D2"), "c1")
    assert reusable_steps(PLANNED_STEPS, completed, before, now) == list(PLANNED_STEPS[:2])
    assert reusable_steps(PLANNED_STEPS, completed, {}, before) == []


def test_summary_shows_steps_error_and_suggestions():
    steps = [Step(name=n, status=s, duration=d) for n, s, d in zip(
        PLANNED_STEPS, [StepStatus.SKIPPED, StepStatus.COMPLETED, StepStatus.COMPLETED,
                        StepStatus.FAILED, StepStatus.SKIPPED], [None, 0.5, 2.0, 0.3, None],
        strict=True)]
    error = Failure(step="Start application", message="command exited with code 125",
                    command="docker run ...", exit_code=125, output_tail=["Bind | failed"],
                    suggestions=[Suggestion(kind="port-in-use", title="Port 80 is in use",
                                            detail="Change services[web].host_port",
                                            evidence="Bind failed",
                                            seen_before="seen in 2 of the last 10 runs")])
    run = Run(id=uuid4(), name="shop-abc1234", app="shop", status=RunStatus.FAILED, steps=steps,
              commit="abc1234def", commit_message="fix", duration=3.2, error=error,
              services=[ServiceRelease(name="web", image="i", build="rebuilt",
                                       build_reason="first build"),
                        ServiceRelease(name="api", image="j", build="reused",
                                       build_reason="unchanged", container="replaced",
                                       container_reason="configuration changed", port="proxy")])
    text = summary_markdown(run)
    assert text.startswith("## 🔴 shop: Failed")
    assert "| 🔴 | Start application | **Failed** | 0.3 s |" in text
    assert "| ⚪ | ~~Health check~~ | Skipped |" in text
    assert "Command: `docker run ...` — exit code 125" in text
    assert "Bind \\| failed" not in text and "Bind | failed" in text  # inside a code block
    assert "**Port 80 is in use** `port-in-use` *(seen in 2 of the last 10 runs)*" in text
    assert "| web | rebuilt (first build) | - | - |" in text
    assert ("| api | reused (unchanged) | replaced (configuration changed) | through the proxy "
            "(no downtime) |") in text


def test_container_state_in_words():
    assert describe_state("a-web", "status=restarting exit_code=137 oom_killed=true "
                                   "restarts=5 error=") == \
        "container a-web is restarting (last exit code 137, OOM-killed, 5 restarts)"
    assert describe_state("a-web", "status=running exit_code=0 oom_killed=false restarts=0 "
                                   "error=") == "container a-web is running"
    assert describe_state("a-web", "") == "container a-web: state unknown"
