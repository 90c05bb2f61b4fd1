"""One active run per application, held with a Prefect global concurrency limit.

Each application has a global concurrency limit `deploy-runs-app-APP` of 1. A deploy run takes
its slot, with a lease, before its first step and gives it back when it ends, Paused time
included (a paused run still owns its half-done deploy). While a run waits for the slot it is
Started (no step has begun) and says which run it waits for. The application's policy decides
what a run does when the slot is taken:

- `queue` (default): wait, in the order the runs were requested;
- `replace`: like queue, but a waiting run that sees a newer request of the same app ends
  Stopped ("replaced by run X") — the latest code wins;
- `reject`: end Stopped at once, naming the active run (`DeployRuns.deploy` refuses before even
  creating the run, with the same message).

Why a global concurrency limit and not the deployment's `concurrency_limit`: Prefect releases a
deployment slot when the run moves to Paused and never takes it again on resume, so a paused
run and a newer one would overlap; a lease we hold ourselves survives the pause. It also covers
runs started without a worker (in-process flow calls).

A run whose process dies stops renewing the lease; Prefect's lease reaper gives the slot back
LEASE_SECONDS (60, Prefect's minimum) to about 75 s later. No lock, marker or file is left.

The engine's own faults (a Prefect server restarted with its leases in memory, a holder whose
release never reached the server) can leave the slot counted while nobody holds it. The run
first in line for the slot frees it (`Orphans`):

- a slot held by a run that is no longer active: its lease (the run's label names it) is
  released at once, as the run would have released it;
- a slot counted while no active run holds it and no ended run's lease is known: freed after
  ORPHAN_GRACE_SECONDS (10 s) of seeing it so on every look (a run that has just taken the slot
  says so within milliseconds).

Either is said in the waiting run's log ("slot held by no active run; freed").
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import PrefectHTTPStatusError

from deploy_runs.controls import STOP, requested, thread_in_run_context
from deploy_runs.history import run_filter
from deploy_runs.run_record.facts import fact_label
from deploy_runs.status import RunStatus

SLOT_LABEL = fact_label("slot")
LEASE_LABEL = fact_label("lease")  # the lease by which a run holds the slot
HELD = "held"
LEASE_SECONDS = 60.0
RENEW_EVERY = LEASE_SECONDS * 0.75  # as Prefect renews its own leases
RENEW_RETRY_SECONDS = 5.0
POLL_SECONDS = 1.0
# how long the slot must be seen counted with no holder before it is freed (a run that takes
# the slot labels itself its holder right after)
ORPHAN_GRACE_SECONDS = 10.0
ENDING = "a run that is ending"
ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED)
# a run that is ending (Cancelling) may still hold the lease: taking the slot, not this list,
# is what decides
ACTIVE = (RunStatus.STARTED, RunStatus.IN_PROGRESS, RunStatus.PAUSED)
ACTIVE_SORT = FlowRunSort.EXPECTED_START_TIME_ASC
QUEUED_TYPES = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING)


def limit_name(app: str) -> str:
    return f"deploy-runs-app-{app}"


class SlotRefused(Exception):
    """The run does not get the application's slot: it ends Stopped with this message."""


def active_filter(app: str) -> FlowRunFilter:
    """Runs of `app` that have not ended (Started, In Progress, Paused)."""
    return run_filter(app, ACTIVE)


def active_runs(client: SyncPrefectClient, app: str) -> list[FlowRun]:
    """Runs of `app` that have not ended, oldest request first."""
    return client.read_flow_runs(flow_run_filter=active_filter(app), sort=ACTIVE_SORT, limit=200)


def holds_slot(flow_run: FlowRun) -> bool:
    return (flow_run.labels or {}).get(SLOT_LABEL) == HELD


def describe(flow_run: FlowRun) -> str:
    state = flow_run.state.name if flow_run.state else "Scheduled"
    return f"{flow_run.id} ({flow_run.name}, {state})"


def busy_message(app: str, active: list[FlowRun]) -> str:
    """Why a deploy of `app` is refused under the `reject` policy."""
    holder = next((r for r in active if holds_slot(r)), active[0])
    return (f"{app} already has an active run: {describe(holder)}; its concurrency policy is "
            "`reject` (wait for that run to end, stop it, or set `concurrency: queue`)")


@dataclass
class Waiting:
    """What a run waiting for its application's slot decides on each look (pure)."""

    policy: str
    run_id: UUID

    def look(self, active: list[FlowRun]) -> tuple[bool, str]:
        """(may try to take the slot now, the run it waits for) — or raise SlotRefused."""
        mine = next((r for r in active if r.id == self.run_id), None)
        if mine is not None and requested(mine) == STOP:
            raise SlotRefused("Stopped by request while waiting for the application's slot.")
        others = [r for r in active if r.id != self.run_id]
        holder = next((r for r in others if holds_slot(r)), None)

        def requested_before(r: FlowRun) -> bool:
            return bool(mine and r.created and mine.created and r.created < mine.created)

        def requested_after(r: FlowRun) -> bool:
            return bool(mine and r.created and mine.created and r.created > mine.created)

        if self.policy == "reject":
            first = holder or next((r for r in others if requested_before(r)), None)
            if first is not None:
                raise SlotRefused(f"Refused: run {describe(first)} of the application is "
                                  "active (concurrency: reject).")
        if self.policy == "replace":
            newer = [r for r in others if not holds_slot(r) and requested_after(r)]
            if newer:
                raise SlotRefused("Replaced by a newer run of the application: "
                                  f"{describe(newer[-1])} (concurrency: replace).")
        # runs requested earlier go first (FIFO), also those whose process has not started yet
        # (workers start processes in no particular order); not ones scheduled for later
        now = datetime.now(UTC)
        earlier = [r for r in others if not holds_slot(r) and requested_before(r)
                   and r.state is not None and r.state.type in QUEUED_TYPES
                   and not (r.expected_start_time and r.expected_start_time > now)]
        blocker = holder or (earlier[0] if earlier else None)
        return not earlier, describe(blocker) if blocker else ENDING


def _acquire(client: SyncPrefectClient, app: str, run_id: UUID) -> UUID | None:
    """Take the app's slot with a lease: the lease id, or None when the slot is taken."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id)
    for _ in range(2):
        try:
            response = client.increment_concurrency_slots_with_lease(
                [limit_name(app)], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS,
                holder=holder)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423:  # Locked: the slot is taken
                return None
            raise
        body = response.json()
        if body.get("limits"):
            return UUID(body["lease_id"])
        # no such limit yet (the app's first run): create it and try again
        client.release_concurrency_slots_with_lease(UUID(body["lease_id"]))
        client.upsert_global_concurrency_limit_by_name(limit_name(app), 1)
    raise RuntimeError(f"could not create the concurrency limit {limit_name(app)}")


def _renew(lease: UUID) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.renew_concurrency_lease(lease, lease_duration=LEASE_SECONDS)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code in (404, 410):
                raise LeaseLost(f"the server answered {exc.response.status_code}") from None
            raise


class LeaseLost(Exception):
    """The server no longer has the lease (it expired): renewing it again cannot help."""


class LeaseKeeper:
    """Renews a lease every `every` seconds after it was `taken` (a time.monotonic() value,
    default now) while the body runs. A failed renewal is said and tried again after
    `retry_after` seconds (the lease lasts LEASE_SECONDS); a lease the server no longer has
    (`LeaseLost`) is said once and not renewed again.

    Why not Prefect's own renewal (`maintain_concurrency_lease`, not public in 3.9): measured
    side by side, it costs one more request per run (about 2 ms, 8 ms of CPU: no benchmark
    figure changes), but it gives up renewing after three failed attempts, so a server away
    for longer (tests/integration/test_engine_faults.py stops it for 10 s) would let the lease
    run out under a run that is still deploying, and the next run of the app start beside it.
    This keeps trying every `retry_after` seconds, through Prefect's public client."""

    def __init__(self, renew: Callable[[], None], *, log: Callable[[str], None],
                 every: float = RENEW_EVERY, retry_after: float = RENEW_RETRY_SECONDS,
                 taken: float | None = None) -> None:
        self.renew, self.log = renew, log
        self.every, self.retry_after = every, retry_after
        self.taken = time.monotonic() if taken is None else taken
        self._stop = threading.Event()
        self._thread = thread_in_run_context(self._keep, "deploy-runs-lease")

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _keep(self) -> None:
        wait = max(0.0, self.every - (time.monotonic() - self.taken))
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = self.every
            except LeaseLost as exc:
                if not self._stop.is_set():
                    self.log(f"The lease on the application's slot is gone ({exc}); another "
                             "run of the application may start before this one ends.")
                return
            except Exception as exc:  # the lease lasts a while yet: say so, try again soon
                if self._stop.is_set():
                    return
                self.log(f"Could not renew the lease on the application's slot ({exc}); "
                         f"trying again in {self.retry_after:g} s.")
                wait = self.retry_after


@dataclass
class Orphans:
    """Whether the application's slot, found taken, is held by nobody (pure): true once every
    look for `grace` seconds (time.monotonic() values) found no active run holding it."""

    grace: float = ORPHAN_GRACE_SECONDS
    since: float | None = None

    def look(self, active: list[FlowRun], now: float) -> bool:
        if any(holds_slot(r) for r in active):
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.grace

    def reset(self) -> None:
        self.since = None


def ended_holders(runs: list[FlowRun]) -> list[tuple[FlowRun, UUID]]:
    """Runs (ended) still labelled holders of the slot, with the lease they held (pure)."""
    found = []
    for run in runs:
        lease = (run.labels or {}).get(LEASE_LABEL)
        if holds_slot(run) and isinstance(lease, str):
            with contextlib.suppress(ValueError):
                found.append((run, UUID(lease)))
    return found


def _free_ended_holders(client: SyncPrefectClient, app: str, log: Callable[[str], None]) -> bool:
    """Release the leases of runs of `app` that ended still holding its slot (their release
    never reached the server); true when there was one."""
    ended = client.read_flow_runs(flow_run_filter=run_filter(app, ENDED),
                                  sort=FlowRunSort.END_TIME_DESC, limit=20)
    holders = ended_holders(ended)
    for run, lease in holders:
        client.release_concurrency_slots_with_lease(lease)
        client.update_flow_run_labels(run.id, {SLOT_LABEL: "released"})
        log(f"The slot of {app} was still held by run {describe(run)}, which has ended: "
            "slot held by no active run; freed.")
    return bool(holders)


def _free_orphan(client: SyncPrefectClient, app: str, log: Callable[[str], None]) -> None:
    client.release_concurrency_slots([limit_name(app)], slots=1,
                                     occupancy_seconds=ORPHAN_GRACE_SECONDS)
    log(f"The slot of {app} was counted taken for {ORPHAN_GRACE_SECONDS:g} s with no run "
        "holding it (a lease the Prefect server lost): slot held by no active run; freed.")


@contextlib.contextmanager
def app_slot(app: str, run_id: UUID, policy: str, *,
             log: Callable[[str], None]) -> Iterator[float]:
    """Hold the application's slot for the body; yields the seconds spent waiting for it.
    Raises SlotRefused when the policy (or a Stop while waiting) ends the run instead."""
    waiting = Waiting(policy, run_id)
    orphans = Orphans()
    began = time.monotonic()
    said = ""
    with get_client(sync_client=True) as client:
        while True:
            active = active_runs(client, app)
            may_try, blocker = waiting.look(active)
            lease = _acquire(client, app, run_id) if may_try else None
            if lease is not None:
                taken = time.monotonic()
                break
            if policy == "reject":  # the holder was not listed yet: refuse all the same
                raise SlotRefused(f"Refused: another run of {app} holds its slot "
                                  "(concurrency: reject).")
            if not may_try:  # runs requested earlier go first, and free the slot if need be
                orphans.reset()
            elif not any(holds_slot(r) for r in active) and _free_ended_holders(client, app, log):
                orphans.reset()
                continue
            elif orphans.look(active, time.monotonic()):
                _free_orphan(client, app, log)
                orphans.reset()
                continue
            if blocker != said:
                log(f"Waiting for run {blocker} to end: one run of {app} at a time "
                    f"(concurrency: {policy})." if blocker != ENDING else
                    f"Waiting for the slot of {app}: it is held by a run that is ending, or by "
                    f"none (then it is freed {ORPHAN_GRACE_SECONDS:g} s from now).")
                said = blocker
            time.sleep(POLL_SECONDS)
        waited = time.monotonic() - began
        if said:
            log(f"Got the slot of {app} after waiting {waited:.1f} s.")
        try:
            client.update_flow_run_labels(run_id, {SLOT_LABEL: HELD, LEASE_LABEL: str(lease)})
            with LeaseKeeper(partial(_renew, lease), log=log, taken=taken):
                yield waited
        finally:
            with contextlib.suppress(Exception):
                client.release_concurrency_slots_with_lease(lease)
            with contextlib.suppress(Exception):
                client.update_flow_run_labels(run_id, {SLOT_LABEL: "released"})
