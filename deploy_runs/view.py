"""How runs look in a terminal: the product page's indicators (gray, blue animated, green, red,
gray strikethrough) with rich.

Text that came from a repository or a server (log lines, commit messages, errors, names) goes
through `_safe`/`_text`: its escape sequences removed and control characters shown, and into
rich only as `Text`, never as a string rich would read as markup (`[bold]`, `:emoji:`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from deploy_runs.safetext import safe_terminal
from deploy_runs.status import RUN_INDICATORS, STEP_INDICATORS, Indicator, RunStatus, StepStatus

if TYPE_CHECKING:  # annotations only: the CLI's --help imports this module
    from deploy_runs.logs import LogLine
    from deploy_runs.models import LogMatch, RecurringFailure, Run, RunComparison, RunStats

_COLOURS = {"gray": "grey58", "blue": "dodger_blue1", "green": "green3", "red": "red3",
            "yellow": "yellow3"}


def _safe(text: str | None, width: int | None = None) -> str:
    """Cut after cleaning: the width counts what is shown, and no sequence is cut in half."""
    return safe_terminal(text or "")[:width]


def _text(text: str | None, style: str = "", width: int | None = None) -> Text:
    return Text(_safe(text, width), style=style)


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
    return _text(line.text, _STREAM_STYLES.get(line.stream, ""), width)


def step_header(step: str | None) -> Text:
    return Text(f"── {_safe(step or 'run')} ──", style="bold magenta")


def render_run(run: Run, tail: list[LogLine] | None = None) -> RenderableType:
    head = Text.assemble(
        ("Run ", "bold"), (str(run.id), "bold"), "  ", (_safe(run.name), "magenta"), "\n",
        "app ", (_safe(run.app), "bold"), "   status ", run_status_text(run.status),
        "   commit ", (_safe(run.commit, 12) if run.commit else "-", "cyan"),
        (f"  {_safe(run.commit_message)}" if run.commit_message else "", "grey58"),
        f"   duration {_seconds(run.duration)}" if run.duration is not None else "",
        ("   current release", "green3") if run.current else "",
        (f"\nrollback to the release of run {run.rollback_to}", "yellow3") if run.rollback_to
        else "",
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
        table.add_row(_mark(indicator), _text(step.name, style),
                      Text(str(step.status), style=style), _seconds(step.duration),
                      _text(step.message, "red3" if failed else "grey58"))
    parts: list[RenderableType] = [head]
    if run.waiting_reason and not run.status.is_final:
        parts.append(_text(f"⏳ {run.waiting_reason}", "yellow3"))
    parts.append(table)
    if run.services:
        services = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        for column in ("service", "image", "build", "container", "port"):
            services.add_column(column)
        for release in run.services:
            container = f"{release.container} ({release.container_reason})" \
                if release.container else "-"
            services.add_row(_text(release.name), _text(release.image),
                             _text(f"{release.build} ({release.build_reason})"), _text(container),
                             _text(release.port or "-"))
        parts.append(services)
    if tail:
        parts.append(step_header(tail[-1].step))
        parts += [render_log_line(line, 200) for line in tail]
    if run.error:
        error = run.error
        lines = Text.assemble(("✖ ", "red3"), (_safe(error.message), "red3"))
        if error.command:
            lines.append(f"\n  command:   $ {_safe(error.command)}")
        if error.exit_code is not None:
            lines.append(f"\n  exit code: {error.exit_code}")
        for line in error.output_tail[-15:]:
            lines.append(f"\n  | {_safe(line, 300)}", style="grey70")
        if error.suggestions:
            lines.append("\nSuggested fixes:", style="bold")
        for suggestion in error.suggestions:
            lines.append(f"\n  → {_safe(suggestion.title)}", style="bold yellow3")
            lines.append(f" [{_safe(suggestion.kind)}]", style="grey58")
            if suggestion.seen_before:
                lines.append(f" ({_safe(suggestion.seen_before)})", style="magenta")
            lines.append(f"\n    {_safe(suggestion.detail)}")
            if suggestion.evidence:
                lines.append(f"\n    evidence: {_safe(suggestion.evidence, 200)}", style="grey58")
        parts.append(Panel(lines, title=Text(f"{_safe(error.step)} failed", style="bold red3"),
                           border_style="red3", title_align="left"))
    return Group(*parts)


def render_runs(runs: list[Run]) -> RenderableType:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("")
    table.add_column("run", no_wrap=True, min_width=36)
    for column in ("app", "status", "commit", "trigger", "started", "duration", "release"):
        table.add_column(column, no_wrap=True)
    for run in runs:
        indicator = RUN_INDICATORS[run.status]
        started = run.started_at or run.created_at
        table.add_row(_mark(indicator), str(run.id), _text(run.app), run_status_text(run.status),
                      _text(run.commit, width=12) if run.commit else "-",
                      _text(run.trigger) if run.trigger else "-",
                      started.strftime("%Y-%m-%d %H:%M:%S") if started else "",
                      _seconds(run.duration), Text("current", style="green3") if run.current
                      else "")
    return table


def _delta(value: float | None) -> Text:
    if value is None:
        return Text("")
    return Text(f"{value:+.1f}s", style="red3" if value > 0.05 else "green3" if value < -0.05
                else "grey58")


def _status(status: StepStatus) -> Text:
    indicator = STEP_INDICATORS[status]
    return Text(f"{indicator.symbol} {status}", style=_style(indicator))


def render_comparison(c: RunComparison) -> RenderableType:
    a, b = c.run_a, c.run_b
    head = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    head.add_column("")
    head.add_column(_text(f"A  {a.name}"), no_wrap=True)
    head.add_column(_text(f"B  {b.name}"), no_wrap=True)
    head.add_column("")
    head.add_row("status", run_status_text(a.status), run_status_text(b.status), "")
    head.add_row("commit", _text(f"{_safe(a.commit or '-', 12)} {a.commit_message or ''}"),
                 _text(f"{_safe(b.commit or '-', 12)} {b.commit_message or ''}"), "")
    head.add_row("duration", _seconds(a.duration), _seconds(b.duration), _delta(c.duration_delta))
    head.add_row("rebuilt", _text(", ".join(c.rebuilt_a) or "-"),
                 _text(", ".join(c.rebuilt_b) or "-"), "")
    steps = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for column in ("step", "A", "time", "B", "time", "Δ"):
        steps.add_column(column, no_wrap=True)
    for s in c.steps:
        steps.add_row(_text(s.name), _status(s.status_a), _seconds(s.duration_a), _status(s.status_b),
                      _seconds(s.duration_b), _delta(s.delta))
    parts: list[RenderableType] = [head, Text(""), steps]
    if c.commits_between is not None:
        parts.append(Text(f"\ncommits from A to B ({len(c.commits_between)}):", style="bold"))
        parts += [_text(f"  {line}") for line in c.commits_between]
    if c.config is not None:
        changes = [(label, getattr(c.config, name)) for name, label in (
            ("env_added", "env added"), ("env_removed", "env removed"),
            ("env_changed", "env changed"), ("secrets_added", "secrets added"),
            ("secrets_removed", "secrets removed"), ("ports", "ports"),
            ("health_checks", "health checks"), ("services_added", "services added"),
            ("services_removed", "services removed"), ("other", "other"))]
        parts.append(Text("\nconfig: " + ("no change" if c.config.empty else ""), style="bold"))
        parts += [_text(f"  {label}: {', '.join(values)}") for label, values in changes if values]
    for label, error in (("A", c.error_a), ("B", c.error_b)):
        if error:
            kind = f" [{error.suggestions[0].kind}]" if error.suggestions else ""
            parts.append(Text.assemble(
                ("\n" + f"{label} failed at {_safe(error.step)}{_safe(kind)}: ", "bold red3"),
                (_safe(error.message, 300), "red3")))
    if c.divergence:
        d = c.divergence
        parts.append(Text(f"\n{_safe(d.step)}: output diverges at line {d.line}", style="bold"))
        parts += [Text(f"  A | {_safe(line, 200)}", style="grey70") for line in d.a]
        parts += [Text(f"  B | {_safe(line, 200)}", style="yellow3") for line in d.b]
    return Group(*parts)


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    values = values[-width:]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BARS[int((v - low) / span * (len(_BARS) - 1))] for v in values)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render_stats(s: RunStats) -> RenderableType:
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    trend = s.trend

    def change(name: str, fmt: Callable[[float], str]) -> str:
        t = trend.get(name)
        if not t or t.previous is None or t.change is None:
            return ""
        return f"  (previous {fmt(t.previous)}, {'+' if t.change >= 0 else ''}{fmt(t.change)})"

    table.add_row("runs", f"{s.runs} in {s.days} days: {s.completed} completed, {s.failed} "
                          f"failed, {s.stopped} stopped" + change("deploys", lambda v: f"{v:.0f}"))
    table.add_row("success rate", _pct(s.success_rate) + change("success_rate", _pct))
    table.add_row("duration", f"median {_seconds(s.median_duration) or '-'}, p90 "
                              f"{_seconds(s.p90_duration) or '-'}"
                  + change("median_duration", lambda v: f"{v:.1f}s"))
    table.add_row("time to recover", (f"median {_seconds(s.time_to_recover)} over "
                                      f"{s.recoveries} recoveries") if s.recoveries else "-")
    per_day = [d.deploys for d in s.per_day]
    table.add_row("per day", f"{sparkline([float(v) for v in per_day])}  "
                             f"max {max(per_day) if per_day else 0}/day")
    table.add_row("per week", ", ".join(f"{w.period}: {w.deploys}" for w in s.per_week[-6:]))
    if s.durations:
        table.add_row("durations", f"{sparkline(s.durations)}  "
                                   f"({min(s.durations):.1f}s .. {max(s.durations):.1f}s)")
    for step, median in s.step_medians.items():
        table.add_row(_text(f"  {step}"), f"median {median:.1f}s")
    return table


def render_failures(failures: list[RecurringFailure]) -> RenderableType:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for column in ("count", "kind", "step", "error", "first seen", "last seen", "apps"):
        table.add_column(column, overflow="fold")
    for f in failures:
        table.add_row(str(f.count), _text(f.kind, "red3"), _text(f.step), _text(f.example, width=160),
                      f.first_seen.strftime("%m-%d %H:%M") if f.first_seen else "",
                      f.last_seen.strftime("%m-%d %H:%M") if f.last_seen else "",
                      _text(", ".join(f.apps)))
    return table


def render_matches(matches: list[LogMatch]) -> RenderableType:
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for column in ("time", "run", "step", "line"):
        table.add_column(column, overflow="fold")
    for m in matches:
        table.add_row(m.time.strftime("%Y-%m-%d %H:%M:%S"), _text(m.run_name or str(m.run_id)),
                      _text(m.step), _text(m.line, width=300))
    return table


def progress_lines(seen: dict[str, object], run: Run) -> list[str]:
    """Plain lines for what changed in `run` since `seen` (updated in place): the run's status,
    why it waits, each step's start and end. For output that is not a terminal (CI logs,
    pipes), where the live view cannot redraw."""
    out: list[str] = []
    if seen.get("status") != run.status:
        seen["status"] = run.status
        commit = f" commit {run.commit[:12]}" if run.commit else ""
        out.append(f"run {run.id} ({_safe(run.name)}) of {_safe(run.app)}: {run.status}{commit}")
    if run.waiting_reason != seen.get("waiting") and not run.status.is_final:
        seen["waiting"] = run.waiting_reason
        if run.waiting_reason:
            out.append(f"  waiting: {_safe(run.waiting_reason)}")
    for step in run.steps:
        if seen.get(step.name) == step.status:
            continue
        seen[step.name] = step.status
        if step.status is StepStatus.PENDING:
            continue
        took = f" in {_seconds(step.duration)}" if step.duration is not None else ""
        note = f": {_safe(step.message, 300)}" if step.message else ""
        ended = step.status is not StepStatus.RUNNING
        out.append(f"  {step.name}: {step.status}{took if ended else ''}{note}")
    return out
