"""Text from repositories and servers shown as text: in a terminal no escape sequence, control
character or rich markup of it acts; in the summary artifact no Markdown of it does."""

from __future__ import annotations

import io
import random
import re
import time
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from rich.console import Console
from typer.testing import CliRunner

from deploy_runs import cli
from deploy_runs.logs import LogLine
from deploy_runs.models import (
    Failure,
    LogDivergence,
    LogMatch,
    RecurringFailure,
    Run,
    RunComparison,
    ServiceRelease,
    Step,
    StepComparison,
    Suggestion,
)
from deploy_runs.run_record.summary import summary_markdown
from deploy_runs.safetext import markdown_code, markdown_code_block, markdown_text, safe_terminal
from deploy_runs.status import RunStatus, StepStatus
from deploy_runs.steps import PLANNED_STEPS
from deploy_runs.view import (
    render_comparison,
    render_failures,
    render_log_line,
    render_matches,
    render_run,
    render_runs,
    step_header,
)

TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
# Nothing a terminal acts on: C0 but tab (and newline, where asked for), DEL, C1, bidi
# overrides and isolates.
ACTIVE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE = [
    f"fix ``` | <script>alert(1)</script> {TITLE}{CLEAR}",
    "[link](javascript:alert(1)) ![img](http://evil.example/x.png) <http://evil.example>",
    "*em* _em_ **strong** ~~del~~ &lt;b&gt; &amp; www.evil.example user@evil.example",
    "# heading\n- item\n1. item\n> quote\n    indented code\n\n```\nfenced\n```",
    "    four spaces first",
    "a \\| b \\` c \\\\ d",
    "`` `x` ``",
    "safe\rEVIL\x08\x08\x1bc\x9b31m\x9d0;t\x9c\x1b[?1049h\x1bP1$r\x1b\\",
    "é ✔ 漢字 😀 👩‍👩‍👧",
]


# --- the terminal ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[31mred\x1b[0m \x1b[1;38;2;255;0;0mbold\x1b[m", "red bold"),
    (f"before{CLEAR}\x1b[H\x1b[3J\x1b[?25l\x1b[10A\x1b[2K after", "before after"),
    (f"a{TITLE}b", "ab"),
    ("a\x1b]2;title\x1b\\b", "ab"),  # OSC ended by ST
    ("a\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),  # hyperlink: its text
    ("a\x9b2Jb\x9d0;pwned\x9cc\x9d0;x\x07d", "abcd"),  # the 8-bit CSI and OSC
    ("a\x1bP1$r\x1b\\b\x1bXsos\x1b\\c\x1b^pm\x9cd\x1b_apc\x07e", "abcde"),  # DCS, SOS, PM, APC
    ("a\x90q\x9cb\x98s\x9cc\x9ep\x9cd\x9fa\x9ce", "abcde"),  # and their 8-bit forms
    ("a\x1bcb\x1b7c\x1b8d\x1b(Be\x1b#8f\x1bMg\x1b=h", "abcdefgh"),  # reset, cursor, charset
    ("tab\tkept", "tab\tkept"),
    ("é ✔ 漢字 😀 👩‍👩‍👧 مرحبا", "é ✔ 漢字 😀 👩‍👩‍👧 مرحبا"),
])
def test_escape_sequences_are_removed(text, shown):
    assert safe_terminal(text) == shown


@pytest.mark.parametrize(("text", "shown"), [
    ("safe\rEVIL", "safe\\rEVIL"),  # a carriage return cannot overwrite what is shown
    ("password\x08\x08\x08\x08****", "password\\x08\\x08\\x08\\x08****"),
    ("bell\x07", "bell\\x07"),
    ("nul\x00 del\x7f nel\x85 ri\x8d st\x9c", "nul\\x00 del\\x7f nel\\x85 ri\\x8d st\\x9c"),
    ("one\ntwo", "one\\ntwo"),  # one value, one line
    ("crlf\r\n", "crlf\\n"),
    ("progress 10%\rprogress 100%\r", "progress 10%\\rprogress 100%"),
    ("esc at the end\x1b", "esc at the end\\x1b"),
    ("esc\x1b\x00", "esc\\x1b\\x00"),
    ("user\u202e\u2066txt.exe", "user\\u202e\\u2066txt.exe"),  # no reordering of the line
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
])
def test_other_control_characters_are_shown(text, shown):
    assert safe_terminal(text) == shown


def test_newlines_can_be_kept():
    assert safe_terminal("one\r\ntwo\rthree\n", keep_newlines=True) == "one\ntwo\\rthree\n"


@pytest.mark.parametrize(("text", "shown"), [
    ("a\x1b]0;pwned", "a0;pwned"),  # an unterminated string is not a sequence: shown
    ("a\x1b]0;pwned\nb\x07", "a0;pwned\\nb\\x07"),
    ("a\x1b[12", "a12"),
    ("a\x1b[", "a"),
    ("a\x9d0;x", "a\\x9d0;x"),
])
def test_unterminated_sequences_leave_no_escape(text, shown):
    assert safe_terminal(text) == shown


def test_nothing_active_is_left_whatever_the_input():
    alphabet = "\x1b\x9b\x9d\x90\x9c\x07\x08\r\n\x00[]P\\^_X;0123:?m c(#\u202eé😀"
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert not ACTIVE.search(safe_terminal(text)), repr(text)
        assert not ACTIVE.search(markdown_text(text)), repr(text)


MB = 1 << 20
FLOODS = {
    "CSI introducers": "\x1b[" * (MB // 2),
    "OSC introducers": "\x1b]" * (MB // 2),
    "DCS introducers": "\x1bP" * (MB // 2),
    "8-bit CSI": "\x9b" * MB,
    "8-bit OSC": "\x9d" * MB,
    "ESC": "\x1b" * MB,
    "one OSC, never ended": "\x1b]0;" + "a" * MB,
    "one OSC, BEL-free controls": "\x1b]" + "\x08" * MB,
    "one CSI, never ended": "\x1b[" + "1;" * (MB // 2),
    "short OSCs cut by ESC": ("\x1b]0;" + "a" * 40 + "\x1b") * (MB // 45),
    "every introducer": "\x1b]\x1b[\x9d\x9b\x1bP\x90\x1b_" * (MB // 10),
    "carriage returns": "\r" * MB + "x",
    "backticks": "`" * MB,
    "punctuation": "<[|`\\*" * (MB // 6),
    "surrogates": "\ud800" * MB,
}


@pytest.mark.parametrize("name", FLOODS)
def test_hostile_megabytes_take_linear_time(name):
    text = FLOODS[name]
    for show in (safe_terminal, markdown_text, markdown_code, lambda t: markdown_code_block([t])):
        started = time.perf_counter()
        shown = show(text)
        assert time.perf_counter() - started < 1.0, (name, show)
        assert "\x1b" not in "".join(shown)


# --- the CLI ---------------------------------------------------------------------------------

def hostile_run() -> Run:
    steps = [Step(name=n, status=s, duration=d, message=m) for n, s, d, m in zip(
        PLANNED_STEPS, [StepStatus.COMPLETED, StepStatus.COMPLETED, StepStatus.FAILED,
                        StepStatus.SKIPPED, StepStatus.SKIPPED], [0.5, 1.0, 2.0, None, None],
        [None, f"commit {TITLE}", f"[bold red]fake[/] {CLEAR}| x |", None, None], strict=True)]
    error = Failure(
        step="Build images", message=f"build failed ``` | <script>alert(1)</script> {TITLE}{CLEAR}",
        command="docker build `id` ``` | <b>", exit_code=1,
        output_tail=["step 1/3", "```", "   ````", f"</pre><script>x</script> {TITLE}",
                     "safe\rEVIL", "[link](javascript:alert(1))", "| a | b |"],
        suggestions=[Suggestion(
            kind="build-command-failed", title="[red]Title[/] <img src=x onerror=alert(1)>",
            detail="![img](http://evil.example/x.png) | *x*", evidence=f"`evidence` ``` {CLEAR}",
            seen_before="seen in 2 of the last 10 runs")])
    return Run(id=uuid4(), name="shop-abc1234", app="shop", status=RunStatus.FAILED, steps=steps,
               commit="abc1234def567890",
               commit_message=f"fix ``` | <script>alert(1)</script> [x](javascript:y) {TITLE}{CLEAR}",
               duration=3.5, error=error,
               services=[ServiceRelease(name="web", image="shop-web:abc", build="rebuilt",
                                        build_reason=f"Dockerfile | changed {CLEAR}",
                                        container="replaced", container_reason="[bold]new[/]")])


def rendered(renderable: object, terminal: bool = False) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=terminal, color_system="truecolor" if terminal else None,
            width=200).print(renderable)
    return out.getvalue()


def hostile_lines() -> list[LogLine]:
    now = datetime.now(UTC)
    return [LogLine(time=now, step="Build images", stream="command", text=f"$ git log {TITLE}"),
            LogLine(time=now, step="Build images", stream="stdout", text=f"{CLEAR}\x1b[31mred"),
            LogLine(time=now, step="Build images", stream="stderr", text="safe\rEVIL [bold]x[/]"),
            LogLine(time=now, step=f"Step {TITLE}", stream="stdout", text="\x9b2J\x07:thumbs_up:")]


def test_the_run_view_shows_hostile_text_as_text():
    run = hostile_run()
    plain = rendered(render_run(run, hostile_lines()))
    assert "\x1b" not in plain and "\x07" not in plain and "\r" not in plain and "\x9b" not in plain
    for text in ("fix ``` | <script>alert(1)</script>", "[bold red]fake[/]", "safe\\rEVIL",
                 "[red]Title[/]", "[bold]new[/]", "[bold]x[/]", ":thumbs_up:", "red"):
        assert text in plain, text
    # on a terminal, only rich's own styling: no title, no clear screen, no cursor move
    styled = rendered(render_run(run, hostile_lines()), terminal=True)
    assert "\x1b]" not in styled and "\x07" not in styled and "\r" not in styled
    assert not re.search(r"\x1b\[[0-9;?]*[A-HJKSTfhlsu]", styled)
    assert "\x1b[1m" in styled  # it is a styled render: the check above was not vacuous


def test_the_other_views_show_hostile_text_as_text():
    run = hostile_run()
    now = datetime.now(UTC)
    comparison = RunComparison(
        run_a=run, run_b=run.model_copy(update={"name": f"[bold]b[/]{TITLE}"}),
        steps=[StepComparison(name=f"[b]s[/]{CLEAR}", status_a=StepStatus.COMPLETED,
                              status_b=StepStatus.FAILED)],
        commits_between=[f"abc [red]x[/] {TITLE}"], error_a=run.error, error_b=run.error,
        divergence=LogDivergence(step="Build images", line=3, a=[CLEAR + "a"], b=[TITLE + "b"]))
    failures = [RecurringFailure(signature="s", kind="k", step=f"[b]x[/]{CLEAR}", message="m",
                                 example=f"{TITLE}[red]e[/]", count=2, apps=["[i]a[/]"],
                                 first_seen=now, last_seen=now, run_ids=[])]
    matches = [LogMatch(run_id=uuid4(), run_name="[b]r[/]", step=TITLE, time=now, stream="stdout",
                        line=f"{CLEAR}[red]line[/]")]
    for view in (render_comparison(comparison), render_failures(failures),
                 render_matches(matches), render_runs([run.model_copy(update={"app": "[b]a[/]"})]),
                 render_log_line(hostile_lines()[1]), step_header(TITLE)):
        for terminal in (False, True):
            out = rendered(view, terminal)
            assert "\x1b]" not in out and "\x07" not in out and "\x1b[2J" not in out
            if not terminal:
                assert "\x1b" not in out
    assert "[bold]b[/]" in rendered(render_comparison(comparison))
    assert "[red]line[/]" in rendered(render_matches(matches))


def test_deploy_runs_logs_prints_hostile_lines_as_text(monkeypatch):
    class Client:
        def logs(self, run_id, step=None, follow=False):
            yield from hostile_lines()

    monkeypatch.setattr(cli, "_client", Client)
    result = CliRunner().invoke(cli.app, ["logs", str(uuid4())])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\r" not in result.output
    for text in ("$ git log", "red", "safe\\rEVIL [bold]x[/]", ":thumbs_up:", "── Step  ──"):
        assert text in result.output, result.output


# --- the summary artifact --------------------------------------------------------------------

MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def tokens_of(markdown: str) -> list:
    flat = []
    for token in MD.parse(markdown):
        flat.append(token)
        flat += token.children or []
    return flat


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_text_renders_as_exactly_the_text(text):
    assert MD.renderInline(markdown_text(text)) == escapeHtml(safe_terminal(text).strip())
    # and as a paragraph of its own: no block (heading, list, code, quote) starts
    assert [t.type for t in MD.parse(markdown_text(text))] in (
        ["paragraph_open", "inline", "paragraph_close"], [])


@pytest.mark.parametrize("text", [*HOSTILE, "`", "``", " ` ", "  ", "", "` x"])
def test_markdown_code_renders_as_exactly_the_text(text):
    shown = safe_terminal(text) or " "
    assert MD.renderInline(f"a {markdown_code(text)}") == f"a <code>{escapeHtml(shown)}</code>"


def test_markdown_code_block_cannot_be_closed_from_inside():
    lines = ["```", "````", "   `````   ", "~~~", "<script>x</script>", f"a{TITLE}", "    b"]
    block = "\n".join(["before", "", *markdown_code_block(lines), "", "after"])
    fences = [t for t in MD.parse(block) if t.type == "fence"]
    assert len(fences) == 1
    assert fences[0].content == "\n".join(safe_terminal(line) for line in lines) + "\n"


def test_the_summary_shows_hostile_text_as_text():
    run = hostile_run()
    markdown = summary_markdown(run)
    assert not ACTIVE.search(markdown.replace("\n", ""))
    tokens = tokens_of(markdown)
    types = {t.type for t in tokens}
    assert not types & {"html_block", "html_inline", "link_open", "image"}, types
    assert "<script" not in MD.render(markdown) and "<img" not in MD.render(markdown)
    # the table keeps its five columns in every row, the commit message is one paragraph
    rows = [t for t in tokens if t.type == "tr_open"]
    assert len(rows) == 1 + len(run.steps) + 1 + len(run.services)
    cells = [t.type for t in tokens if t.type in ("td_open", "th_open", "tr_open")]
    per_row = " ".join(cells).split("tr_open")[1:]
    assert [row.split() for row in per_row][:1 + len(run.steps)] == \
        [["th_open"] * 5] + [["td_open"] * 5] * len(run.steps)
    # the output tail: one code block, every line in it, none closing it
    [fence] = [t for t in tokens if t.type == "fence"]
    assert fence.content.splitlines() == [safe_terminal(line) for line in run.error.output_tail]
    # the texts show as they read
    html = MD.render(markdown)
    for text in ("fix ``` | &lt;script&gt;alert(1)&lt;/script&gt; [x](javascript:y)",
                 "build failed ``` | &lt;script&gt;", "<code>docker build `id` ``` | &lt;b&gt;</code>",
                 "[red]Title[/] &lt;img src=x onerror=alert(1)&gt;",
                 "![img](http://evil.example/x.png) | *x*", "<code>`evidence` ``` </code>",
                 "<s>Health check</s>", "Dockerfile | changed"):
        assert text in html, text


def test_the_summary_keeps_its_words_for_ordinary_runs():
    run = hostile_run().model_copy(update={"commit_message": "Fix the login page"})
    markdown = summary_markdown(run)
    assert markdown.startswith("## 🔴 shop: Failed")
    assert "**Commit** `abc1234def56` Fix the login page" in markdown
    assert "`build-command-failed`" in markdown and "| ⚪ | ~~Health check~~ | Skipped |" in markdown


def test_a_cli_error_shows_a_servers_words_as_text(monkeypatch):
    import io

    import pytest
    import typer
    from rich.console import Console

    import deploy_runs.cli as cli
    from deploy_runs.errors import StepFailed

    out = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=out, force_terminal=True, width=200))

    @cli.friendly
    def fails() -> None:
        raise StepFailed("bad [bold]x[/bold] \x1b]0;pwned\x07\x1b[2J end")

    with pytest.raises(typer.Exit):
        fails()
    shown = out.getvalue()
    assert "[bold]x[/bold]" in shown and "pwned" not in shown and "\x1b[2J" not in shown
