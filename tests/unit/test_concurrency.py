"""What a run waiting for its application's slot decides, per policy, and how its lease is
kept (no server)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from deploy_runs.concurrency import (
    HELD,
    LEASE_LABEL,
    ORPHAN_GRACE_SECONDS,
    SLOT_LABEL,
    LeaseKeeper,
    LeaseLost,
    Orphans,
    SlotRefused,
    Waiting,
    busy_message,
    ended_holders,
)
from deploy_runs.controls import CONTROL_LABEL, STOP

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def run(minute: int, state: StateType = StateType.RUNNING, held: bool = False,
        stop: bool = False) -> FlowRun:
    labels = {}
    if held:
        labels[SLOT_LABEL] = HELD
    if stop:
        labels[CONTROL_LABEL] = STOP
    return FlowRun(id=uuid4(), name=f"app-{minute}", flow_id=uuid4(),
                   created=T0 + timedelta(minutes=minute), labels=labels,
                   state=State(type=state, name=state.value.title()))


def test_queue_waits_for_the_holder_and_lets_earlier_waiters_go_first():
    holder, earlier, me, later = run(0, held=True), run(1), run(2), run(3)
    may_try, blocker = Waiting("queue", me.id).look([holder, earlier, me, later])
    assert may_try is False and str(holder.id) in blocker
    # once the earlier waiter holds the slot, this run is next in line
    now_holding = run(1, held=True)
    may_try, blocker = Waiting("queue", me.id).look([now_holding, me, later])
    assert may_try is True and str(now_holding.id) in blocker


def test_queue_waits_for_earlier_requests_whose_process_has_not_started_yet():
    # a worker may start the later request's process first: it must still go second
    scheduled, me = run(0, StateType.SCHEDULED), run(1)
    assert Waiting("queue", me.id).look([scheduled, me])[0] is False
    # but not for a run scheduled for later
    later = run(0, StateType.SCHEDULED)
    later.expected_start_time = datetime.now(UTC) + timedelta(hours=1)
    assert Waiting("queue", me.id).look([later, me])[0] is True


def test_replace_gives_way_to_a_newer_request_but_not_to_the_holder():
    holder, me, newer = run(0, held=True), run(1), run(2, StateType.SCHEDULED)
    with pytest.raises(SlotRefused, match=f"Replaced by a newer run .*{newer.id}"):
        Waiting("replace", me.id).look([holder, me, newer])
    assert Waiting("replace", me.id).look([holder, me])[0] is True


def test_reject_refuses_when_another_run_holds_or_was_requested_first():
    holder, me = run(0, held=True), run(1)
    with pytest.raises(SlotRefused, match=f"Refused: run {holder.id}"):
        Waiting("reject", me.id).look([holder, me])
    earlier = run(0, StateType.PENDING)
    with pytest.raises(SlotRefused, match=f"Refused: run {earlier.id}"):
        Waiting("reject", me.id).look([earlier, me])
    # a request made after this one does not make this one refused
    assert Waiting("reject", me.id).look([me, run(2)])[0] is True


def test_stop_requested_while_waiting_ends_the_wait():
    me = run(1, stop=True)
    with pytest.raises(SlotRefused, match="Stopped by request while waiting"):
        Waiting("queue", me.id).look([run(0, held=True), me])


def test_busy_message_names_the_run_holding_the_slot():
    waiting, holder = run(1), run(0, held=True)
    message = busy_message("shop", [waiting, holder])
    assert str(holder.id) in message and "`reject`" in message


class Renewals:
    """A renewal that notes when it was called and fails as told."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.at: list[float] = []
        self.failures = failures
        self.error = error or ConnectionError("server unreachable")
        self.changed = threading.Condition()

    def __call__(self) -> None:
        with self.changed:
            self.at.append(time.monotonic())
            self.changed.notify_all()
        if len(self.at) <= self.failures:
            raise self.error

    def wait_for(self, count: int, deadline: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.at) >= count, deadline), self.at


def test_the_lease_is_renewed_every_interval_and_not_when_just_taken():
    renewals = Renewals()
    began = time.monotonic()
    with LeaseKeeper(renewals, log=print, every=0.2):
        renewals.wait_for(2)
    first, second = renewals.at[:2]
    assert first - began >= 0.2
    assert second - first >= 0.2


def test_a_body_shorter_than_the_interval_renews_nothing_and_ends_the_keeper():
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, log=print, every=30)
    with keeper:
        pass
    assert not keeper._thread.is_alive()
    assert renewals.at == []


def test_a_failed_renewal_is_said_and_tried_again_sooner():
    said: list[str] = []
    renewals = Renewals(failures=1)
    with LeaseKeeper(renewals, log=said.append, every=1.0, retry_after=0.05):
        renewals.wait_for(3)
    failed, retried, next_one = renewals.at[:3]
    assert 0.05 <= retried - failed < 1.0
    assert next_one - retried >= 1.0
    assert said == ["Could not renew the lease on the application's slot (server "
                    "unreachable); trying again in 0.05 s."]


def test_the_interval_counts_from_when_the_lease_was_taken():
    renewals = Renewals()
    # taken long ago (say the run's first label write was slow): renewed at once, not 30 s on
    with LeaseKeeper(renewals, log=print, every=30, taken=time.monotonic() - 60):
        renewals.wait_for(1)


def test_a_lease_the_server_no_longer_has_is_said_once_and_not_renewed_again():
    said: list[str] = []
    renewals = Renewals(failures=99, error=LeaseLost("the server answered 410"))
    keeper = LeaseKeeper(renewals, log=said.append, every=0.05)
    with keeper:
        keeper._thread.join(10)
        assert not keeper._thread.is_alive(), "the keeper went on renewing"
    assert len(renewals.at) == 1
    assert said == ["The lease on the application's slot is gone (the server answered 410); "
                    "another run of the application may start before this one ends."]


def test_a_slot_counted_with_no_active_holder_is_an_orphan_after_the_grace_only():
    orphans = Orphans()
    waiting_run = run(1)
    assert orphans.look([waiting_run], now=100.0) is False  # first seen: not yet
    assert orphans.look([waiting_run], now=100.0 + ORPHAN_GRACE_SECONDS - 0.1) is False
    assert orphans.look([waiting_run], now=100.0 + ORPHAN_GRACE_SECONDS) is True


def test_a_holder_seen_on_any_look_starts_the_grace_again():
    orphans = Orphans(grace=10)
    assert orphans.look([run(1)], now=0.0) is False
    # a run that had just taken the slot labels itself its holder: not an orphan
    assert orphans.look([run(0, held=True), run(1)], now=9.0) is False
    assert orphans.look([run(1)], now=12.0) is False  # counted again from here
    assert orphans.look([run(1)], now=21.9) is False
    assert orphans.look([run(1)], now=22.0) is True
    orphans.reset()
    assert orphans.look([run(1)], now=23.0) is False


def test_ended_runs_still_labelled_holders_give_the_lease_they_held():
    lease = uuid4()
    holder = run(0, StateType.FAILED, held=True)
    holder.labels[LEASE_LABEL] = str(lease)
    released = run(1, StateType.COMPLETED)
    released.labels.update({SLOT_LABEL: "released", LEASE_LABEL: str(uuid4())})
    unknown = run(2, StateType.CRASHED, held=True)  # held, lease not recorded (older runs)
    garbled = run(3, StateType.COMPLETED, held=True)
    garbled.labels[LEASE_LABEL] = "not-a-uuid"
    assert ended_holders([holder, released, unknown, garbled]) == [(holder, lease)]
