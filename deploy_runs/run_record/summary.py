"""The run summary artifact: a run in the product's vocabulary, as Markdown for the Prefect UI
(pure: a `Run` in, text out)."""

from __future__ import annotations

from deploy_runs.models import Run
from deploy_runs.safetext import markdown_code, markdown_code_block, markdown_text
from deploy_runs.status import RUN_INDICATORS, STEP_INDICATORS, StepStatus

_EMOJI = {"gray": "⚪", "blue": "🔵", "green": "🟢", "red": "🔴", "yellow": "🟡"}


# Every text below but this module's own words came from a repository or a server: it goes
# through markdown_text (table cells too: `|` is punctuation, escaped), markdown_code or
# markdown_code_block, so a commit message cannot add markup, a link or HTML to the artifact.
_cell = markdown_text


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def artifact_key(app: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: app names are that."""
    return f"deploy-run-{app}"


_PORT = {"proxy": "through the proxy (no downtime)", "direct": "published by the container"}


def summary_markdown(run: Run) -> str:
    indicator = RUN_INDICATORS[run.status]
    out = [f"## {_EMOJI[indicator.colour]} {markdown_text(run.app)}: {run.status}", ""]
    facts = [f"**Run** {markdown_code(run.name)}"]
    if run.commit:
        facts.append(f"**Commit** {markdown_code(run.commit[:12])}"
                     + (f" {_cell(run.commit_message)}" if run.commit_message else ""))
    if run.duration is not None:
        facts.append(f"**Duration** {_seconds(run.duration)}")
    if run.rollback_to:
        facts.append(f"**Rollback** to the release of run {markdown_code(str(run.rollback_to))}")
    if run.current:
        facts.append("**Current release** of the app")
    out += ["  \n".join(facts), ""]
    if run.waiting_reason and not run.status.is_final:
        out += [f"> ⏳ {_cell(run.waiting_reason)}", ""]
    out += ["| | Step | Status | Time | Note |", "|---|---|---|---|---|"]
    for step in run.steps:
        mark = _EMOJI[STEP_INDICATORS[step.status].colour]
        name = _cell(step.name)
        name = f"~~{name}~~" if step.status is StepStatus.SKIPPED else name
        status = f"**{step.status}**" if step.status is StepStatus.FAILED else str(step.status)
        out.append(f"| {mark} | {name} | {status} | {_seconds(step.duration)} | "
                   f"{_cell(step.message or '')} |")
    if run.services:
        out += ["", "| Service | Build | Container | Public port |", "|---|---|---|---|"]
        for s in run.services:
            container = f"{_cell(s.container)} ({_cell(s.container_reason or '')})" \
                if s.container else "-"
            out.append(f"| {_cell(s.name)} | {_cell(s.build)} ({_cell(s.build_reason)}) | "
                       f"{container} | {_PORT.get(s.port or '', '-')} |")
    error = run.error
    if error:
        out += ["", f"### 🔴 {_cell(error.step)} failed", "", _cell(error.message)]
        if error.command:
            out += ["", f"Command: {markdown_code(error.command[:300])}"
                    + (f" — exit code {error.exit_code}" if error.exit_code is not None else "")]
        if error.output_tail:
            out += ["", *markdown_code_block(error.output_tail[-15:], width=300)]
        if error.suggestions:
            out += ["", "### Suggested fixes", ""]
            for s in error.suggestions:
                seen = f" *({_cell(s.seen_before)})*" if s.seen_before else ""
                out.append(f"- **{_cell(s.title)}** {markdown_code(s.kind)}{seen}: {_cell(s.detail)}")
                if s.evidence:
                    out.append(f"  - evidence: {markdown_code(s.evidence[:200])}")
    elif run.message:
        out += ["", _cell(run.message)]
    return "\n".join(out) + "\n"
