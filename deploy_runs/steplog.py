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
- output that arrives faster than the API takes it waits on the server (back-pressure), not
  in the worker's memory.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

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


_ORDER = _StrictlyIncreasingTime()
_OUTPUT_LOGGERS = (COMMAND_LOGGER, *STREAM_LOGGERS.values(),
                   *(name + PART_SUFFIX for name in STREAM_LOGGERS.values()))
_wired = False


def _wire_output_loggers() -> None:
    """Output lines go to the Prefect API only: printing each of them on the flow process's
    console too (Prefect's rich console handler) costs about a millisecond a line, which caps
    a step at ~1,000 lines/s. Step-level messages still reach the console."""
    global _wired
    if _wired:
        return
    api_handlers = [h for h in logging.getLogger("prefect.task_runs").handlers
                    if isinstance(h, APILogHandler)]
    for name in _OUTPUT_LOGGERS:
        logger = logging.getLogger(name)
        logger.addFilter(_ORDER)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        for handler in api_handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
    _wired = True


def log_backlog() -> int:
    """Log records queued in this process and not yet sent to the Prefect API."""
    # Prefect keeps one log worker per API (its instance key includes settings); its queue
    # is private, so read it defensively: no queue found means no back-pressure, not an error
    total = 0
    for worker in list(APILogWorker._instances.values()):
        queue = getattr(worker, "_queue", None) if isinstance(worker, APILogWorker) else None
        if queue is not None:
            total += queue.qsize()
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
    seen finished only once all of its lines can be read.

    Drains Prefect's log workers only. `APILogWorker.drain_all` would stop every queue
    service of the process (they share one registry), the events worker that carries task-run
    states too, and each would be started again at the step's next event (measured: ~60 ms a
    step, a quarter of a no-change redeploy's step time)."""
    with APILogWorker._instance_lock:
        workers = [w for w in list(APILogWorker._instances.values())
                   if isinstance(w, APILogWorker)]
        futures = [worker._drain() for worker in workers]
    concurrent.futures.wait(futures, timeout=timeout)


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

    def info(self, message: str, *args: object) -> None:
        self.flush()
        self._base.info(message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.flush()
        self._base.warning(message, *args)

    def command(self, text: str) -> None:
        self.flush()
        self._command.info("%s$ %s", self.prefix, text)

    def line(self, stream: str, text: str) -> None:
        stream = stream if stream in self._streams else "stdout"
        text = self.prefix + text
        if len(text) > PART_CHARS:
            self._flush_stream(stream)
            whole, part = self._streams[stream]
            while len(text) > PART_CHARS:
                part.info("%s", text[:PART_CHARS])
                text = text[PART_CHARS:]
            whole.info("%s", text)
            return
        if self._pending_chars[stream] + len(text) > PART_CHARS:
            self._flush_stream(stream)
        self._pending[stream].append(text)
        self._pending_chars[stream] += len(text) + 1

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
