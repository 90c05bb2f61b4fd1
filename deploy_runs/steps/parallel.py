"""Work on the services of an app side by side (builds, starts, health probes), in threads
over the server's one SSH connection (a channel per command).

Each service's lines go to a log of its own, every line prefixed `[SERVICE] `, so each
command's output stays whole and in order. The first failure cancels the others where their
work takes the `Cancel` (builds: their commands are killed on the server; health probes:
they stop probing) and is raised, naming its service; starts, a few short commands each with
a put-back on failure, are let finish. A Stop kills them all (the SSH host's interrupt) and is
raised as a Stop.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from deploy_runs.errors import CommandFailed, StepStopped
from deploy_runs.remote import Cancel, Cancelled
from deploy_runs.steplog import StepLog

Item = TypeVar("Item")


def side_by_side(items: Sequence[Item], parallel: int,
                 work: Callable[[Item, StepLog, Cancel], None],
                 name: Callable[[Item], str],
                 log_for: Callable[[str], StepLog] = lambda prefix: StepLog(prefix)) -> None:
    """Run `work(item, log, cancel)` for every item, at most `parallel` at a time; `log` is
    the item's own (`log_for("[NAME] ")`)."""
    cancel = Cancel()

    def one(item: Item) -> None:
        if cancel.reason:
            raise Cancelled(cancel.reason)
        own = log_for(f"[{name(item)}] ")
        try:
            work(item, own, cancel)
        except Cancelled:
            own.info("%s: stopped, %s", name(item), cancel.reason)
            raise
        except BaseException as exc:
            cancel.set(f"{name(item)} failed")
            if isinstance(exc, CommandFailed):  # (a step's own failures name the service)
                exc.service = name(item)  # type: ignore[attr-defined] - named in the failure
            raise
        finally:
            own.flush()

    with ThreadPoolExecutor(max_workers=max(1, parallel),
                            thread_name_prefix="deploy-runs-service") as pool:
        # each thread runs in a copy of this context: the step's task run, log budget and
        # Prefect settings
        futures = [pool.submit(contextvars.copy_context().run, one, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    failed = [e for e in errors if not isinstance(e, StepStopped)]
    if failed:
        raise failed[0]
    stopped = [e for e in errors if not isinstance(e, Cancelled)]
    if stopped or errors:
        raise (stopped or errors)[0]
