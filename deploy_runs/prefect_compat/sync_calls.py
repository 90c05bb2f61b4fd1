"""Prefect calls made, blocking, from the deploy flow's step thread.

Covers Prefect 3.9.0-3.9.1: `Block.load`, `State.result` and `create_markdown_artifact` are
"sync-compatible" (`prefect.utilities.asyncutils.sync_compatible` / `async_dispatch`): each
returns a coroutine when it finds itself in an async context. The deploy flow is async (see
flows/deploy.py) and runs its steps in a thread of their own that carries the flow's run
context, so there Prefect would hand back a coroutine nobody awaits. Prefect's private keyword
`_sync=True` makes the call run to the end and return its value. No upstream issue found; the
public way (`Block.aload`/`load` chosen by the caller's context) picks the async variant here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prefect.artifacts import create_markdown_artifact
from prefect.blocks.core import Block
from prefect.states import State

B = TypeVar("B", bound=Block)


def load_block(block_type: type[B], name: str) -> B:
    """`block_type.load(name)`, blocking."""
    return block_type.load(name, _sync=True)  # type: ignore[return-value, call-arg]


def state_result(state: State) -> Any:
    """`state.result(raise_on_failure=False)`, blocking: a failed state's exception."""
    return state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-arg]


def markdown_artifact(markdown: str, key: str, description: str) -> None:
    """`create_markdown_artifact(...)`, blocking."""
    create_markdown_artifact(markdown=markdown, key=key, description=description,
                             _sync=True)  # type: ignore[call-arg]
