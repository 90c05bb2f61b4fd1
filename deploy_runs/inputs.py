"""What each step's work depends on, as one hash per step (pure).

The hashes chain: a step's hash covers its own inputs and every earlier step's, so a change
upstream (another commit, another server) makes every later step's inputs different too. A
retry reuses a failed run's completed steps only while these hashes are equal.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from blocks import Application


def _hash(previous: str, inputs: Any) -> str:
    text = json.dumps({"previous": previous, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def step_inputs(app: Application, commit: str | None) -> dict[str, str]:
    """Step name -> hash of what that step depends on, for `app` at `commit`."""
    server = app.server
    secrets = {s.name: app.secrets_digest(s.name) for s in app.services}  # keyed: no guesses
    parts: list[tuple[str, Any]] = [
        ("Provision server", {"app": app.name, "host": server.host, "port": server.port,
                              "user": server.username,
                              **({"more_servers": app.more_servers} if app.more_servers else {})}),
        ("Fetch source", {"repository": app.repository, "commit": commit}),
        ("Build images", [s.model_dump(include={"name", "context", "dockerfile", "build_args"})
                          for s in app.services]),
        ("Start application", [{**s.model_dump(include={"name", "container_port", "host_port",
                                                         "env", "memory"}),
                                "secrets": secrets[s.name]} for s in app.services]),
        ("Health check", [s.health_check.model_dump() for s in app.services]),
    ]
    hashes: dict[str, str] = {}
    previous = ""
    for step, inputs in parts:
        previous = hashes[step] = _hash(previous, inputs)
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
