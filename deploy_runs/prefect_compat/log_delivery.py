"""A step's log records delivered to the Prefect API in order, completely, before the step ends.

Covers Prefect 3.9.0-3.9.1: `APILogWorker` (prefect.logging.handlers; its private batching
loop `_main_loop`, `_get_item`, `_handle_batch`, `_prepare_item`, `_queue`, `_lock`,
`_instances`), `APILogHandler.emit` (copied into `StepLogHandler.emit`), and the task engine's
"Task run failed with state" record with an empty `exc_info`. No upstream issue found.

- record times are made strictly increasing within a process, so sorting by time (all the log
  API offers) gives back the order in which lines were printed (`_StrictlyIncreasingTime`);
- a step ends only after its records reached the API (`flush_step_logs`);
- a step's records (its output, its messages, Prefect's task-run messages) go through
  `StepLogWorker`, Prefect's log worker with a flush that does not stop it. Prefect's
  `drain_all` stops the worker (and every other queue service of the process), so each step
  paid for a new worker: an API client (its TLS context is built even for http://), a CSRF
  token request, and a wait (~0.2 s of CPU per no-change redeploy of `shop`, measured);
- output that arrives faster than the API takes it waits on the server (back-pressure), not
  in the worker's memory (`wait_for_log_backlog`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from prefect.logging.handlers import APILogHandler, APILogWorker

# A flood of output waits for the API rather than piling up in memory: at most this many
# records queued per process (bench/abuse.py measures it)
MAX_BACKLOG = 20
BACKLOG_PATIENCE = 30.0


class _StrictlyIncreasingTime(logging.Filter):
    """Give each record a creation time strictly after the previous one's, in whole
    microseconds (what Prefect stores): a float only 1e-6 later can round to the same stored
    microsecond, and two records with the same time and text would read as one."""

    def __init__(self) -> None:
        super().__init__()
        self._last_us = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            us = max(round(record.created * 1_000_000), self._last_us + 1)
            self._last_us = us
            record.created = us / 1_000_000  # within 0.12 µs of `us`: rounds back to it
        return True


class _NoEmptyTraceback(logging.Filter):
    """Prefect 3.9's task engine logs a failed task run's final state with `exc_info=True`
    ("Task run failed with state: ..."), also when the task returned its Failed state (as a
    deploy step does, to give the state a one-line message) and no exception is being
    handled: the record then carries `(None, None, None)`, printed as "NoneType: None" under
    the line in every log. Such a record loses its empty exception info; a real one is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


_NO_EMPTY_TRACEBACK = _NoEmptyTraceback()
_FLUSH = bytearray()  # a flush request in the worker's queue (by identity; never sent)


class StepLogWorker(APILogWorker):
    """Prefect's log worker (same API client, batching, request and error handling), which
    can be told to send its batch now and waited on until it has sent every record queued so
    far, without being stopped.

    Between flushes it sends as Prefect's does (every `min_interval`); at process exit Prefect
    drains it with every other queue service (one registry)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._progress = threading.Condition()
        self._queued = 0
        self._handled = 0
        self._ended = False

    def _prepare_item(self, item: bytes) -> bytes:
        # Prefect calls this under the worker's lock, just before it queues the record: the
        # count and the queue agree for `flush`, which reads one and writes the other under
        # the same lock
        with self._progress:
            self._queued += 1
        return super()._prepare_item(item)

    async def _main_loop(self) -> None:
        try:
            await self._send_batches()
        finally:
            with self._progress:
                self._ended = True
                self._progress.notify_all()

    async def _send_batches(self) -> None:
        """Prefect's batching (a batch is sent `min_interval` after its first record, or when
        full), but a flush request sends the batch at once."""
        stopping = False
        while not stopping:
            item = await self._get_item()  # waits for the first record
            batch: list[bytes] = []
            size = 0
            deadline = time.monotonic() + (self.min_interval or 0.0)
            while True:
                if item is None:
                    stopping = True
                    break
                if item is _FLUSH:
                    break
                batch.append(item)
                size += self._get_size(item)
                left = deadline - time.monotonic()
                if size >= self.max_batch_size or left <= 0:
                    break
                try:
                    item = await self._get_item(timeout=left)
                except queue.Empty:
                    break
            if not batch:
                continue
            try:
                await self._handle_batch(batch)  # reports its own errors, as Prefect's does
            finally:
                with self._progress:
                    self._handled += len(batch)
                    self._progress.notify_all()

    def flush(self, timeout: float) -> bool:
        """Send the current batch now and wait until every record queued before this call has
        been sent (or the worker has ended: Prefect drained it, or it could not start); False
        if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            with self._progress:
                target = self._queued
                if self._handled >= target:
                    return True
            if not self._stopped:
                self._queue.put_nowait(_FLUSH)  # after every record counted in `target`
        with self._progress:
            while self._handled < target and not self._ended and not self._start_failed():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.5))
        return True

    def _start_failed(self) -> bool:
        done = self._done_event  # set when the service ended, also when its start failed
        return done is not None and done.is_set()

    @classmethod
    def all(cls) -> list[StepLogWorker]:
        with cls._instance_cache_lock:
            return [w for w in cls._instances.values() if isinstance(w, cls)]


class StepLogHandler(APILogHandler):
    """Prefect's API log handler, sending through `StepLogWorker`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from prefect.context import get_settings_context

            if not get_settings_context().settings.logging.to_api.enabled:
                return
            if not getattr(record, "send_to_api", True):
                return
            StepLogWorker.instance().send(self.prepare(record))
        except Exception:
            self.handleError(record)


_ORDER = _StrictlyIncreasingTime()
_wiring = threading.Lock()


def wire_output_loggers(output_loggers: tuple[str, ...]) -> None:
    """Task-run records (a step's) go to the API through `StepLogWorker`, in place of
    Prefect's handler on `prefect.task_runs` (checked at every step: Prefect may set its
    logging up again). Output lines go to the API only: printing each of them on the flow
    process's console too (Prefect's rich console handler) costs about a millisecond a line,
    which caps a step at ~1,000 lines/s. Step-level messages still reach the console."""
    task_runs = logging.getLogger("prefect.task_runs")
    with _wiring:
        if _NO_EMPTY_TRACEBACK not in task_runs.filters:
            task_runs.addFilter(_NO_EMPTY_TRACEBACK)
        prefects = [h for h in task_runs.handlers
                    if isinstance(h, APILogHandler) and not isinstance(h, StepLogHandler)]
        ours = [h for h in task_runs.handlers if isinstance(h, StepLogHandler)]
        if prefects:  # Prefect's logging config sends task-run records to the API
            handler = ours[0] if ours else StepLogHandler()
            handler.setLevel(prefects[0].level)
            handler.setFormatter(prefects[0].formatter)
            for old in prefects:
                task_runs.removeHandler(old)
            if not ours:
                task_runs.addHandler(handler)
            ours = [handler]
        for name in output_loggers:
            logger = logging.getLogger(name)
            if _ORDER not in logger.filters:
                logger.addFilter(_ORDER)
            logger.setLevel(logging.INFO)
            for handler in ours:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            # not to the console too; but where nothing sends them to the API (Prefect's
            # logging set up without it), they go where task-run records go
            logger.propagate = not ours


def log_backlog() -> int:
    """Log records queued in this process and not yet sent to the Prefect API."""
    # the queue is the worker's (Prefect's) private attribute: read it defensively, no
    # queue found means no back-pressure, not an error
    total = 0
    for worker in StepLogWorker.all():
        pending = getattr(worker, "_queue", None)
        if pending is not None:
            total += pending.qsize()
    return total


def wait_for_log_backlog(limit: int = MAX_BACKLOG, patience: float = BACKLOG_PATIENCE) -> None:
    """Back-pressure: while more than `limit` records wait for the API, do not read more
    output (the server's command then blocks on its full SSH window, and loses nothing).
    Gives up after `patience` seconds, so a slow API slows a step but never hangs it."""
    deadline = time.monotonic() + patience
    while log_backlog() > limit and time.monotonic() < deadline:
        time.sleep(0.005)


def flush_step_logs(timeout: float = 120.0) -> None:
    """Block until every log record queued so far has reached the Prefect API, so a step is
    seen finished only once all of its lines can be read. The worker keeps running."""
    deadline = time.monotonic() + timeout
    for worker in StepLogWorker.all():
        worker.flush(max(0.0, deadline - time.monotonic()))
