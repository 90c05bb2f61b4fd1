"""A step's log: every command it runs on the server (`$ ...`) and that command's output,
line by line as it is printed, sent to the step's Prefect task-run log.

The logger name says what a record is, so readers can tell output streams apart:
`prefect.task_runs.command`, `prefect.task_runs.stdout`, `prefect.task_runs.stderr`; anything
the step itself says goes under `prefect.task_runs`.

What keeps every line intact through Prefect's log pipeline: a line longer than `PART_CHARS` is
sent as several records, all but the last under the stream's `.part` logger (Prefect truncates
a single record over 1 MB); readers join them. Delivery (order, completeness before a step
ends, back-pressure) is the seam's: `deploy_runs.prefect_compat.log_delivery`.
"""

from __future__ import annotations

import contextvars
import logging
import threading

from prefect import get_run_logger
from prefect.logging.loggers import PrefectLogAdapter

from deploy_runs.prefect_compat.log_delivery import (
    wait_for_log_backlog,
    wire_output_loggers,
)

COMMAND_LOGGER = "prefect.task_runs.command"
STREAM_LOGGERS = {
    "stdout": "prefect.task_runs.stdout",
    "stderr": "prefect.task_runs.stderr",
}
PART_SUFFIX = ".part"
OUTPUT_LOGGERS = (COMMAND_LOGGER, *STREAM_LOGGERS.values(),
                  *(name + PART_SUFFIX for name in STREAM_LOGGERS.values()))
PART_CHARS = 100_000  # x 6 bytes at worst once JSON-escaped: well under Prefect's 1 MB per record


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
        self._lock = threading.Lock()

    def take(self, chars: int, ends_line: bool = True) -> bool:
        """Whether output of `chars` characters is stored; if not, it is counted. (Services
        worked side by side share the step's budget: one thread at a time.)"""
        with self._lock:
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
        wire_output_loggers(OUTPUT_LOGGERS)
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
        self._base.info(self.prefix + message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.flush()
        self._base.warning(self.prefix + message, *args)

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
