"""What each step's work depends on, as one hash per step (pure).

The hashes chain: a step's hash covers its own inputs and every earlier step's, so a change
upstream (another commit, another server) makes every later step's inputs different too. A
retry reuses a failed run's completed steps only while these hashes are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from blocks import Application

if TYPE_CHECKING:
    from deploy_runs.steps.step import StepSpec


def _hash(previous: str, inputs: Any) -> str:
    text = json.dumps({"previous": previous, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def step_inputs(app: Application, commit: str | None,
                steps: Sequence[StepSpec] | None = None) -> dict[str, str]:
    """Step name -> hash of what that step depends on (each step's declared `inputs`), for
    `app` at `commit`; `steps`: the pipeline's (default)."""
    if steps is None:
        from deploy_runs.steps import STEPS

        steps = STEPS
    hashes: dict[str, str] = {}
    previous = ""
    for spec in steps:
        previous = hashes[spec.name] = _hash(previous, spec.inputs(app, commit))
    return hashes


def reusable_steps(planned: tuple[str, ...], completed: set[str], before: dict[str, str],
                   now: dict[str, str]) -> list[str]:
    """The leading steps of `planned` that completed before with the same inputs as now."""
    reuse: list[str] = []
    for step in planned:
        if step not in completed or not before.get(step) or before.get(step) != now.get(step):
            break
        reuse.append(step)
    return reuse
