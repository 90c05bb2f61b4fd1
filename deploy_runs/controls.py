"""Run controls: Pause, Resume, Stop.

Prefect cannot tell a running flow "pause after this task", and its cancel reaches neither
in-process runs nor commands on a remote server. So a control is a *request* written on the
flow run (the label `deploy-runs.control`), and the flow acts on it itself:

- between steps, `Checkpoint.before_step` reads the request: Stop ends the run Stopped; Pause
  puts the run in Prefect's PAUSED state and waits (polling) for Resume, Stop, a Prefect cancel
  or the pause timeout (which ends the run Stopped, not Failed);
- during a step, `StopWatcher` (a thread) reads the flow run every `POLL` seconds; on a Stop
  request or a Prefect cancel (UI Cancel, `prefect flow-run cancel`) it interrupts the running
  step, which kills the step's command on the server by its process group;
- Prefect's own suspend (the UI's Pause button on a deployment run) ends the flow's process at
  the next step and Resume runs the flow again from the top in a new one: `Checkpoint` ends the
  process as soon as it sees the suspend, also one that came and went (the new process is
  already Running).

Reading the flow run gives both the request (labels) and the state in one API call.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.exceptions import Pause
from prefect.states import Paused
from prefect.utilities.engine import propose_state_sync

from deploy_runs.run_record.facts import fact_label

CONTROL_LABEL = fact_label("control")
PAUSE, STOP = "pause", "stop"
POLL = 0.2
PREFECT_PAUSE_GRACE = 60


def requested(flow_run: FlowRun) -> str | None:
    value = (flow_run.labels or {}).get(CONTROL_LABEL)
    return str(value) if value in (PAUSE, STOP) else None


def is_suspension(state: State | None) -> bool:
    """Prefect's suspend: the process ends, and Resume starts the flow again in a new one."""
    return bool(state and state.type is StateType.PAUSED and state.name == "Suspended")


def cancel_requested(flow_run: FlowRun) -> bool:
    """Prefect's own cancel (UI Cancel button, `prefect flow-run cancel`) means Stop."""
    state = flow_run.state
    return bool(state and state.type in (StateType.CANCELLING, StateType.CANCELLED))


@dataclass(frozen=True)
class Decision:
    stop: bool
    message: str = ""


GO = Decision(stop=False)


class Checkpoint:
    """The flow's check between steps. Used only inside the deploy flow."""

    def __init__(self, run_id: UUID, pause_timeout: float,
                 log: Callable[[str], None] = lambda _: None,
                 began: State | None = None) -> None:
        self.run_id = run_id
        self.pause_timeout = pause_timeout
        self.log = log
        self.pauses = 0
        self.began = began  # the Running state this process entered

    def before_step(self, step: str) -> Decision:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(self.run_id)
            if cancel_requested(flow_run) or requested(flow_run) == STOP:
                return Decision(True, f"Stopped by request before {step}.")
            self._end_if_suspended(client, flow_run, step)
            if requested(flow_run) == PAUSE:
                return self._pause(client, step)
        return GO

    def _end_if_suspended(self, client: SyncPrefectClient, flow_run: FlowRun,
                          step: str) -> None:
        """End this process (Prefect's Pause signal) if the run was suspended since it began.

        Prefect 3 sets task states in the flow's process (no server check) and tells a process
        of a suspend late at times (seconds, under load): the next step would run in it. And
        when Resume has already started the flow again in a new process, the run is Running
        again: only its states say a suspend came. That process waits for the app's slot,
        which this one holds until it ends, and only then reads the finished steps.
        """
        suspension = flow_run.state if is_suspension(flow_run.state) else None
        changed = flow_run.state is not None and self.began is not None \
            and flow_run.state.id != self.began.id
        if suspension is None and changed:  # the run's state moved since this process began
            states = client.read_flow_run_states(self.run_id)  # oldest first
            ids = [s.id for s in states]
            if self.began.id in ids:
                suspension = next((s for s in states[ids.index(self.began.id) + 1:]
                                   if is_suspension(s)), None)
        if suspension is not None:
            self.log(f"suspended before {step}: this process ends; Resume runs the flow again "
                     "and it goes on from here (finished steps are not run again)")
            raise Pause(state=suspension)

    def _pause(self, client: SyncPrefectClient, step: str) -> Decision:
        self.pauses += 1
        state = propose_state_sync(
            client,
            # Prefect fails a pause that expires; our own deadline (below) comes first and
            # ends the run Stopped, so Prefect's is only the fallback for a dead process.
            Paused(timeout_seconds=int(self.pause_timeout) + PREFECT_PAUSE_GRACE, reschedule=False,
                   pause_key=f"deploy-runs-pause-{self.pauses}",
                   message=f"Paused by request before {step}."),
            flow_run_id=self.run_id,
        )
        if not state.is_paused():
            return GO
        self.log(f"paused before {step}; waiting for resume or stop "
                 f"(stops by itself after {self.pause_timeout:g}s)")
        deadline = time.monotonic() + self.pause_timeout
        while True:
            time.sleep(POLL)
            flow_run = client.read_flow_run(self.run_id)
            if cancel_requested(flow_run) or requested(flow_run) == STOP:
                return Decision(True, f"Stopped by request while paused before {step}.")
            self._end_if_suspended(client, flow_run, step)
            if flow_run.state and flow_run.state.is_running():
                if requested(flow_run) == PAUSE:
                    # Resumed from elsewhere (e.g. the Prefect UI): the request is spent.
                    client.update_flow_run_labels(self.run_id, {CONTROL_LABEL: ""})
                self.log(f"resumed; continuing with {step}")
                return GO
            if time.monotonic() > deadline:
                return Decision(True, f"Paused for longer than the pause timeout "
                                      f"({self.pause_timeout:g}s); the run was stopped.")


def thread_in_run_context(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread that runs `target` in the caller's context: there it reads the API the
    run uses (Prefect's settings are a context variable; a bare thread would read the
    process's defaults)."""
    return threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name,
                            daemon=True)


class StopWatcher:
    """While a step runs, watch for Stop and interrupt the step when it comes.

    One thread for the whole run (it opens its API client once: that takes about a second
    in a fresh thread); it reads the flow run only while a step is running.
    """

    def __init__(self, run_id: UUID, interrupt: Callable[[str], None]) -> None:
        self.run_id = run_id
        self.interrupt = interrupt
        self.stopped: str | None = None
        self._active = threading.Event()
        self._done = threading.Event()
        self._thread = thread_in_run_context(self._watch, "deploy-runs-stop-watcher")

    def __enter__(self) -> StopWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Not joined: the thread notices within POLL seconds and ends by itself.
        self._done.set()
        self._active.set()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Watch while the body (one step) runs."""
        self._active.set()
        try:
            yield
        finally:
            self._active.clear()

    def _watch(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._done.is_set():
                self._active.wait()
                if self._done.wait(POLL):
                    return
                if not self._active.is_set():
                    continue
                try:
                    flow_run = client.read_flow_run(self.run_id)
                except Exception:
                    continue
                if self._active.is_set() and (cancel_requested(flow_run)
                                              or requested(flow_run) == STOP):
                    self.stopped = "Stopped by request while this step was running."
                    self.interrupt(self.stopped)
                    return
