"""Runs whose process died (worker machine lost, SIGKILL) end Crashed in bounded time.

Prefect's own mechanism (measured on 3.9.1): a flow-run process sends a heartbeat event every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (minimum 30, default 180), and an automation with a
proactive trigger sets a run CRASHED when no heartbeat (and no final state) follows the last one
within `WITHIN` seconds. The run is then marked Crashed (shown Failed) about `WITHIN` + 5 s
after its last heartbeat, so 45-95 s after the process died. `WITHIN` stays well above the
frequency: an automation tighter than the heartbeat crashes healthy runs.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

HEARTBEAT_SECONDS = 30
WITHIN_SECONDS = 90
AUTOMATION_NAME = "deploy-runs: crash deploy runs whose process died"
HEARTBEAT_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


def ensure_crash_automation() -> None:
    """Create the automation once per Prefect server (looked up by name)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with contextlib.suppress(ValueError):
        if Automation.read(name=AUTOMATION_NAME):
            return
    Automation(
        name=AUTOMATION_NAME,
        description="A deploy-app run that stops sending heartbeats (its process died) is "
                    f"marked Crashed after {WITHIN_SECONDS}s.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "deploy-app"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=WITHIN_SECONDS),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"The run's process stopped sending heartbeats (none for "
                    f"{WITHIN_SECONDS}s): its worker or machine died.")],
    ).create()
