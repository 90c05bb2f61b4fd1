"""A step's log: every command it runs on the server (`$ ...`) and that command's output,
line by line as it is printed, sent to the step's Prefect task-run log.

The logger name says what a record is, so readers can tell output streams apart:
`prefect.task_runs.command`, `prefect.task_runs.stdout`, `prefect.task_runs.stderr`; anything
the step itself says goes under `prefect.task_runs`.
"""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.logging.loggers import PrefectLogAdapter

COMMAND_LOGGER = "prefect.task_runs.command"
STREAM_LOGGERS = {
    "stdout": "prefect.task_runs.stdout",
    "stderr": "prefect.task_runs.stderr",
}


class StepLog:
    """An `OutputSink` bound to the current task run."""

    def __init__(self, prefix: str = "") -> None:
        base = get_run_logger()
        extra = dict(getattr(base, "extra", {}) or {})
        self.prefix = prefix
        self.info = base.info
        self.warning = base.warning
        self._command = PrefectLogAdapter(logging.getLogger(COMMAND_LOGGER), extra)
        self._streams = {
            name: PrefectLogAdapter(logging.getLogger(logger), extra)
            for name, logger in STREAM_LOGGERS.items()
        }

    def command(self, text: str) -> None:
        self._command.info("%s$ %s", self.prefix, text)

    def line(self, stream: str, text: str) -> None:
        self._streams.get(stream, self._streams["stdout"]).info("%s%s", self.prefix, text)
