"""A step's log: every command it runs on the server (`$ ...`) and that command's output,
line by line as it is printed, sent to the step's Prefect task-run log.

The logger name says what a record is, so readers can tell output streams apart:
`prefect.task_runs.command`, `prefect.task_runs.stdout`, `prefect.task_runs.stderr`; anything
the step itself says goes under `prefect.task_runs`.

What keeps every line intact through Prefect's log pipeline:
- a line longer than `PART_CHARS` is sent as several records, all but the last under the
  stream's `.part` logger (Prefect truncates a single record over 1 MB); readers join them;
- record times are made strictly increasing within a process, so sorting by time (all the log
  API offers) gives back the order in which lines were printed;
- a step ends only after its records reached the API (`flush_step_logs`);
- a step's records (its output, its messages, Prefect's task-run messages) go through
  `StepLogWorker`, Prefect's log worker with a flush that does not stop it. Prefect's
  `drain_all` stops the worker (and every other queue service of the process), so each step
  paid for a new worker: an API client (its TLS context is built even for http://), a CSRF
  token request, and a wait (~0.2 s of CPU per no-change redeploy of `shop`, measured);
- output that arrives faster than the API takes it waits on the server (back-pressure), not
  in the worker's memory.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from typing import Any

from prefect import get_run_logger
from prefect.logging.handlers import APILogHandler, APILogWorker
from prefect.logging.loggers import PrefectLogAdapter

COMMAND_LOGGER = "prefect.task_runs.command"
STREAM_LOGGERS = {
    "stdout": "prefect.task_runs.stdout",
    "stderr": "prefect.task_runs.stderr",
}
PART_SUFFIX = ".part"
PART_CHARS = 100_000  # x 6 bytes at worst once JSON-escaped: well under Prefect's 1 MB per record
# A flood of output waits for the API rather than piling up in memory: at most this many
# records (each at most PART_CHARS characters) queued per process (bench/abuse.py measures it)
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
_OUTPUT_LOGGERS = (COMMAND_LOGGER, *STREAM_LOGGERS.values(),
                   *(name + PART_SUFFIX for name in STREAM_LOGGERS.values()))
_wiring = threading.Lock()


def _wire_output_loggers() -> None:
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
        for name in _OUTPUT_LOGGERS:
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


class LogBudget:
    """How much of a step's command output is stored: past `limit` characters, lines are
    counted, not stored (a flood of output cannot fill Prefect's database), and the step's
    log says so once when it happens and again, with the count, when the step ends."""

    def __init__(self, limit_mb: float, setting: str = "log_limit_mb") -> None:
        self.limit = int(limit_mb * 1_000_000)
        self.limit_mb = limit_mb
        self.setting = setting
        self.stored = 0
        self.dropped_lines = 0
        self.dropped_chars = 0

    def take(self, chars: int, ends_line: bool = True) -> bool:
        """Whether output of `chars` characters is stored; if not, it is counted."""
        if self.dropped_chars == 0 and self.stored + chars <= self.limit:
            self.stored += chars
            return True
        self.dropped_chars += chars
        self.dropped_lines += ends_line
        return False

    def reached_message(self) -> str:
        return (f"this step's output has reached its log limit ({self.limit_mb:g} MB, "
                f"{self.setting}): further lines are counted, not stored; the command keeps "
                "running")

    def summary(self) -> str | None:
        if not self.dropped_chars:
            return None
        return (f"{self.dropped_lines} line(s) ({self.dropped_chars / 1_000_000:.1f} MB) of "
                f"output past this step's log limit ({self.limit_mb:g} MB, {self.setting}) "
                "were counted, not stored; the commands kept running")


_budget: contextvars.ContextVar[LogBudget | None] = contextvars.ContextVar(
    "deploy_runs_step_log_budget", default=None)


def begin_log_budget(limit_mb: float) -> LogBudget:
    """The running step's output budget (read by every `StepLog` made in the step)."""
    budget = LogBudget(limit_mb)
    _budget.set(budget)
    return budget


def end_log_budget() -> None:
    """Say how much output went unstored, if any; the next step has a budget of its own."""
    budget = _budget.get()
    _budget.set(None)
    if budget is not None and (summary := budget.summary()):
        get_run_logger().warning(summary)


class StepLog:
    """An `OutputSink` bound to the current task run.

    Output lines are coalesced: the lines of one stream that arrive together (what one read
    from the server brought) go out as one record, its text the lines joined by newlines, and
    readers split them again. At a line a second every line is its own record, at once; at
    thousands a second records stay few, because Prefect's API takes only several hundred
    records a second on a small machine, and each record costs the flow process too.
    """

    def __init__(self, prefix: str = "") -> None:
        _wire_output_loggers()
        base = get_run_logger()
        extra = dict(getattr(base, "extra", {}) or {})
        self.prefix = prefix
        self._base = base
        self._command = PrefectLogAdapter(logging.getLogger(COMMAND_LOGGER), extra)
        self._streams = {
            name: (PrefectLogAdapter(logging.getLogger(logger), extra),
                   PrefectLogAdapter(logging.getLogger(logger + PART_SUFFIX), extra))
            for name, logger in STREAM_LOGGERS.items()
        }
        self._pending: dict[str, list[str]] = {name: [] for name in STREAM_LOGGERS}
        self._pending_chars = dict.fromkeys(STREAM_LOGGERS, 0)
        self._in_long_line: dict[str, bool] = {}

    def info(self, message: str, *args: object) -> None:
        self.flush()
        self._base.info(message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.flush()
        self._base.warning(message, *args)

    def command(self, text: str) -> None:
        self.flush()
        self._command.info("%s$ %s", self.prefix, text)

    def _stored(self, text: str, ends_line: bool) -> bool:
        budget = _budget.get()
        if budget is None:
            return True
        reached = budget.dropped_chars == 0
        if budget.take(len(text) + 1, ends_line):
            return True
        if reached:
            self.warning(budget.reached_message())
        return False

    def line(self, stream: str, text: str) -> None:
        stream = stream if stream in self._streams else "stdout"
        if not self._stored(text, ends_line=True):
            if self._in_long_line.pop(stream, False):  # end the line its stored pieces began
                self._send_part(stream, "", last=True)
            return
        if self._in_long_line.pop(stream, False):  # the end of a long line
            self._send_part(stream, text, last=True)
            return
        text = self.prefix + text
        if len(text) > PART_CHARS:
            self._send_part(stream, text, last=True)
            return
        if self._pending_chars[stream] + len(text) > PART_CHARS:
            self._flush_stream(stream)
        self._pending[stream].append(text)
        self._pending_chars[stream] += len(text) + 1

    def part(self, stream: str, text: str) -> None:
        """A piece of a long line (the executor hands a line on in pieces as it arrives)."""
        stream = stream if stream in self._streams else "stdout"
        if not self._stored(text, ends_line=False):
            return
        if not self._in_long_line.get(stream):
            self._in_long_line[stream] = True
            text = self.prefix + text
        self._send_part(stream, text, last=False)

    def _send_part(self, stream: str, text: str, *, last: bool) -> None:
        """Records of the stream's `.part` logger, the last one (when the line ends here)
        under the stream's own logger: readers join them into one line."""
        self._flush_stream(stream)
        whole, part = self._streams[stream]
        while len(text) > PART_CHARS or (not last and text):
            wait_for_log_backlog()
            part.info("%s", text[:PART_CHARS])
            text = text[PART_CHARS:]
        if last:
            wait_for_log_backlog()
            whole.info("%s", text)

    def flush(self) -> None:
        """Send what is waiting (the executor calls this whenever the server is quiet)."""
        for stream in self._pending:
            self._flush_stream(stream)

    def _flush_stream(self, stream: str) -> None:
        lines = self._pending[stream]
        if lines:
            wait_for_log_backlog()
            self._streams[stream][0].info("%s", "\n".join(lines))
            self._pending[stream] = []
            self._pending_chars[stream] = 0
