"""How runs look in a terminal: the product page's indicators (gray, blue animated, green, red,
gray strikethrough) with rich."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from deploy_runs.logs import LogLine
from deploy_runs.models import Run
from deploy_runs.status import RUN_INDICATORS, STEP_INDICATORS, Indicator, RunStatus, StepStatus

_COLOURS = {"gray": "grey58", "blue": "dodger_blue1", "green": "green3", "red": "red3",
            "yellow": "yellow3"}


def _style(indicator: Indicator) -> str:
    style = _COLOURS.get(indicator.colour, indicator.colour)
    return f"{style} strike" if indicator.strikethrough else style


def _mark(indicator: Indicator) -> RenderableType:
    if indicator.animated:
        return Spinner("dots", style=_style(indicator))
    return Text(indicator.symbol, style=_style(indicator))


def run_status_text(status: RunStatus) -> Text:
    indicator = RUN_INDICATORS[status]
    return Text(f"{indicator.symbol} {status}", style=_style(indicator))


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


_STREAM_STYLES = {"command": "bold", "stderr": "yellow3", "stdout": "", "log": "grey58"}


def render_log_line(line: LogLine, width: int | None = None) -> Text:
    text = line.text if width is None else line.text[:width]
    return Text(text, style=_STREAM_STYLES.get(line.stream, ""))


def step_header(step: str | None) -> Text:
    return Text(f"── {step or 'run'} ──", style="bold magenta")


def render_run(run: Run, tail: list[LogLine] | None = None) -> RenderableType:
    head = Text.assemble(
        ("Run ", "bold"), (str(run.id), "bold"), "  ", (run.name, "magenta"), "\n",
        "app ", (run.app, "bold"), "   status ", run_status_text(run.status),
        "   commit ", (run.commit[:12] if run.commit else "-", "cyan"),
        (f"  {run.commit_message}" if run.commit_message else "", "grey58"),
        f"   duration {_seconds(run.duration)}" if run.duration is not None else "",
    )
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("", width=2)
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("note", overflow="fold")
    for step in run.steps:
        indicator = STEP_INDICATORS[step.status]
        failed = step.status is StepStatus.FAILED
        style = f"bold {_style(indicator)}" if failed else _style(indicator)
        table.add_row(_mark(indicator), Text(step.name, style=style),
                      Text(str(step.status), style=style), _seconds(step.duration),
                      Text(step.message or "", style="red3" if failed else "grey58"))
    parts: list[RenderableType] = [head, table]
    if run.services:
        services = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        for column in ("service", "image", "build", "container"):
            services.add_column(column)
        for release in run.services:
            container = f"{release.container} ({release.container_reason})" \
                if release.container else "-"
            services.add_row(release.name, release.image,
                             f"{release.build} ({release.build_reason})", container)
        parts.append(services)
    if tail:
        parts.append(step_header(tail[-1].step))
        parts += [render_log_line(line, 200) for line in tail]
    if run.error:
        error = run.error
        lines = Text.assemble(("✖ ", "red3"), (error.message, "red3"))
        if error.command:
            lines.append(f"\n  command:   $ {error.command}")
        if error.exit_code is not None:
            lines.append(f"\n  exit code: {error.exit_code}")
        for line in error.output_tail[-15:]:
            lines.append(f"\n  | {line[:300]}", style="grey70")
        if error.suggestions:
            lines.append("\nSuggested fixes:", style="bold")
        for suggestion in error.suggestions:
            lines.append(f"\n  → {suggestion.title}", style="bold yellow3")
            lines.append(f" [{suggestion.kind}]", style="grey58")
            if suggestion.seen_before:
                lines.append(f" ({suggestion.seen_before})", style="magenta")
            lines.append(f"\n    {suggestion.detail}")
            if suggestion.evidence:
                lines.append(f"\n    evidence: {suggestion.evidence[:200]}", style="grey58")
        parts.append(Panel(lines, title=Text(f"{error.step} failed", style="bold red3"),
                           border_style="red3", title_align="left"))
    return Group(*parts)


def render_runs(runs: list[Run]) -> RenderableType:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("")
    table.add_column("run", no_wrap=True, min_width=36)
    for column in ("app", "status", "commit", "created", "duration"):
        table.add_column(column, no_wrap=True)
    for run in runs:
        indicator = RUN_INDICATORS[run.status]
        table.add_row(_mark(indicator), str(run.id), run.app, run_status_text(run.status),
                      run.commit[:12] if run.commit else "-",
                      run.created_at.strftime("%m-%d %H:%M:%S") if run.created_at else "",
                      _seconds(run.duration))
    return table

