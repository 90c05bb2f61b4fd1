"""The run summary artifact: a run in the product's vocabulary, as Markdown for the Prefect UI
(pure: a `Run` in, text out)."""

from __future__ import annotations

from deploy_runs.models import Run
from deploy_runs.status import RUN_INDICATORS, STEP_INDICATORS, StepStatus

_EMOJI = {"gray": "⚪", "blue": "🔵", "green": "🟢", "red": "🔴", "yellow": "🟡"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def artifact_key(app: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: app names are that."""
    return f"deploy-run-{app}"


def summary_markdown(run: Run) -> str:
    indicator = RUN_INDICATORS[run.status]
    out = [f"## {_EMOJI[indicator.colour]} {run.app}: {run.status}", ""]
    facts = [f"**Run** `{run.name}`"]
    if run.commit:
        facts.append(f"**Commit** `{run.commit[:12]}`"
                     + (f" {_cell(run.commit_message)}" if run.commit_message else ""))
    if run.duration is not None:
        facts.append(f"**Duration** {_seconds(run.duration)}")
    out += ["  \n".join(facts), "", "| | Step | Status | Time | Note |", "|---|---|---|---|---|"]
    for step in run.steps:
        mark = _EMOJI[STEP_INDICATORS[step.status].colour]
        name = f"~~{step.name}~~" if step.status is StepStatus.SKIPPED else step.name
        status = f"**{step.status}**" if step.status is StepStatus.FAILED else str(step.status)
        out.append(f"| {mark} | {name} | {status} | {_seconds(step.duration)} | "
                   f"{_cell(step.message or '')} |")
    if run.services:
        out += ["", "| Service | Build | Container |", "|---|---|---|"]
        for s in run.services:
            container = f"{s.container} ({s.container_reason})" if s.container else "-"
            out.append(f"| {s.name} | {s.build} ({_cell(s.build_reason)}) | {_cell(container)} |")
    error = run.error
    if error:
        out += ["", f"### 🔴 {error.step} failed", "", _cell(error.message)]
        if error.command:
            out += ["", f"Command: `{error.command[:300]}`"
                    + (f" — exit code {error.exit_code}" if error.exit_code is not None else "")]
        if error.output_tail:
            out += ["", "```", *[line[:300] for line in error.output_tail[-15:]], "```"]
        if error.suggestions:
            out += ["", "### Suggested fixes", ""]
            for s in error.suggestions:
                seen = f" *({s.seen_before})*" if s.seen_before else ""
                out.append(f"- **{_cell(s.title)}** `{s.kind}`{seen}: {_cell(s.detail)}")
                if s.evidence:
                    out.append(f"  - evidence: `{_cell(s.evidence[:200])}`")
    elif run.message:
        out += ["", _cell(run.message)]
    return "\n".join(out) + "\n"
