"""Services worked side by side: every item runs, at most `parallel` at once, each with its
own log; the first failure cancels the rest and is raised naming its service; a Stop is
raised as a Stop."""

from __future__ import annotations

import threading
import time

import pytest

from deploy_runs.errors import CommandFailed, StepFailed, StepStopped
from deploy_runs.remote import Cancel, Cancelled
from deploy_runs.steps.parallel import side_by_side


class Log:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.said: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.said.append(self.prefix + message % args)

    def flush(self) -> None:
        pass


def run(items, parallel, work):
    logs: list[Log] = []

    def log_for(prefix: str) -> Log:
        logs.append(Log(prefix))
        return logs[-1]

    side_by_side(items, parallel, work, str, log_for)
    return logs


def wait_cancelled(cancel: Cancel, limit: float = 5) -> None:
    """What a command does while it runs: ends when its Cancel is set."""
    deadline = time.monotonic() + limit
    while not cancel.reason:
        assert time.monotonic() < deadline, "never cancelled"
        time.sleep(0.005)
    raise Cancelled(cancel.reason)


def test_every_item_runs_at_most_parallel_at_once_each_with_its_own_log() -> None:
    lock = threading.Lock()
    now, most, done = [0], [0], []
    pair = threading.Barrier(2, timeout=5)  # two at once, or this times out

    def work(item: str, log: Log, cancel: Cancel) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        pair.wait()
        log.info("built %s", item)
        with lock:
            now[0] -= 1
            done.append(item)

    logs = run(["web", "api", "admin", "worker"], 2, work)
    assert sorted(done) == ["admin", "api", "web", "worker"]
    assert most[0] == 2
    assert sorted(s for log in logs for s in log.said) == [
        "[admin] built admin", "[api] built api", "[web] built web", "[worker] built worker"]


def test_the_first_failure_cancels_the_others_and_names_its_service() -> None:
    seen: dict[str, str] = {}
    begun = threading.Barrier(3, timeout=5)  # every item is running when api fails

    def work(item: str, log: Log, cancel: Cancel) -> None:
        begun.wait()
        if item == "api":
            raise CommandFailed("docker build ...", 1, ["error: missing semicolon"])
        try:
            wait_cancelled(cancel)
        except Cancelled as exc:
            seen[item] = str(exc)
            raise

    with pytest.raises(CommandFailed) as raised:
        run(["web", "api", "admin"], 3, work)
    assert raised.value.service == "api"  # the failure is recorded as "api: ..."
    assert seen == {"web": "api failed", "admin": "api failed"}


def test_an_item_not_begun_when_another_failed_never_begins() -> None:
    began: list[str] = []

    def work(item: str, log: Log, cancel: Cancel) -> None:
        began.append(item)
        raise StepFailed(f"service {item} is broken")

    with pytest.raises(StepFailed, match="service web is broken"):
        run(["web", "api"], 1, work)
    assert began == ["web"]


def test_a_stop_is_raised_as_a_stop() -> None:
    def work(item: str, log: Log, cancel: Cancel) -> None:
        if item == "web":
            raise StepStopped("stopped by the user")
        wait_cancelled(cancel)

    with pytest.raises(StepStopped, match="stopped by the user") as raised:
        run(["web", "api"], 2, work)
    assert not isinstance(raised.value, Cancelled)
