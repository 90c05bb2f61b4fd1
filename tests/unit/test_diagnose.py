"""Diagnosis rules against real failure outputs: those kept in tests/fixtures/failures (each one
produced in the sandbox by tests/integration/test_failures.py) and the wordings in
tests/fixtures/wording (each quoted from a tool's source or from an output users posted, with
the versions that print it: Docker 20.10 to 29, BuildKit and the legacy builder, OpenSSH,
paramiko, git, curl, wget); hostile inputs for every rule; and the parts around them:
signatures, history, suggesters."""

from __future__ import annotations

import ast
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import Application, Service, SSHServer
from deploy_runs.diagnosis import (
    RULES,
    FailureContext,
    diagnose,
    normalise,
    register_suggester,
    seen_before,
    signature,
    suggest,
    unregister_suggester,
)
from deploy_runs.models import Failure, Suggestion, SuggestionKind

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "failures").glob("*.json"))
WORDING = [case for path in sorted((Path(__file__).resolve().parents[1] / "fixtures"
                                    / "wording").glob("*.json"))
           for case in json.loads(path.read_text())]
KINDS = set(SuggestionKind.__args__)  # type: ignore[attr-defined]


def load(path: Path) -> tuple[Failure, str]:
    data = json.loads(path.read_text())
    return Failure.model_validate(data), data["expected_kind"]


def app_with(**service: object) -> Application:
    server = SSHServer(host="10.0.0.5", port=22, username="deploy", private_key="k",
                       host_key="ssh-ed25519 AAAA")
    return Application(name="shop", repository="git://example/shop.git", server=server,
                       services=[Service(**{"name": "web", "container_port": 8080,
                                            "host_port": 8080, **service})])


def test_every_kind_has_a_real_fixture():
    kinds = {load(path)[1] for path in FIXTURES}
    assert kinds == KINDS, f"kinds without a real fixture: {sorted(KINDS - kinds)}"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_real_output_is_diagnosed_most_specific_first(path):
    failure, kind = load(path)
    found = diagnose(failure.text(), failure.step)
    assert found, failure.text()
    assert found[0].kind == kind, [s.kind for s in found]
    assert found[0].evidence and found[0].evidence in failure.text()
    assert found[0].title and found[0].detail


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_real_output_is_diagnosed_without_the_step_too(path):
    failure, kind = load(path)
    assert diagnose(failure.text())[0].kind == kind


def test_every_kind_is_recognised_in_the_wording_of_several_tools_and_versions():
    kinds = {case["expected_kind"] for case in WORDING} - {None}
    assert kinds == KINDS, f"kinds without a quoted wording: {sorted(KINDS - kinds)}"
    assert len({case["case"] for case in WORDING}) == len(WORDING), "case names are unique"
    assert all(case["source"] and case["text"] for case in WORDING)
    assert sum(case["expected_kind"] is None for case in WORDING) >= 10


@pytest.mark.parametrize("case", WORDING, ids=[c["case"] for c in WORDING])
def test_real_wording_is_diagnosed_as_its_kind_first(case):
    found = diagnose(case["text"], case["step"])
    if case["expected_kind"] is None:  # mentions error words but is no known failure
        assert found == [], [(s.kind, s.evidence) for s in found]
        return
    assert found, case["text"]
    assert found[0].kind == case["expected_kind"], [(s.kind, s.evidence) for s in found]
    assert found[0].evidence and found[0].evidence in case["text"]
    assert found[0].title and found[0].detail


def test_nothing_recognised_gives_no_suggestion():
    assert diagnose("something odd happened\nexit status 1", "Build images") == []
    assert diagnose("") == []


def test_port_detail_names_the_setting_and_the_holder():
    text = ("docker: Error response from daemon: driver failed programming external "
            "connectivity on endpoint shop-web (abc): Bind for 0.0.0.0:8080 failed: port is "
            "already allocated")
    [found] = diagnose(text, "Start application", app=app_with())
    assert found.kind == "port-in-use"
    assert "services[web].host_port of app shop (now 8080)" in found.detail
    assert "another container" in found.detail


def test_oom_detail_names_the_memory_setting():
    text = ("service web did not become healthy within 4s (last probe: x); container shop-web "
            "is restarting\nstatus=restarting exit_code=137 oom_killed=true restarts=5 error=")
    found = diagnose(text, "Health check", app=app_with(memory="64m"))
    assert found[0].kind == "out-of-memory"
    assert "services[web].memory (now 64m)" in found[0].detail


def test_signature_ignores_volatile_parts():
    a = Failure(step="Fetch source", message="git ref 'release-41' was not found in "
                "git://10.0.0.5:9418/app-1a2b3c4d.git at 2026-11-27T10:00:01Z")
    b = Failure(step="Fetch source", message="git ref 'release-42' was not found in "
                "git://10.0.0.9:9418/app-ffee0011.git at 2026-11-28T11:30:00Z")
    c = Failure(step="Fetch source", message="git ref 'hotfix' was not found in x")
    for failure in (a, b, c):
        failure.suggestions = diagnose(failure.text(), failure.step)
    assert signature(a) == signature(b) != signature(c)
    assert signature(a).startswith("git-ref-not-found|Fetch source|")
    assert "<n>" in normalise("port 8080") and "<path>" in normalise("at /home/deploy/x")


def test_seen_before_counts_and_dates():
    t1, t2 = datetime(2026, 11, 20, 10, 2, tzinfo=UTC), datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    history = [("a", t2), (None, t2), ("a", t1), ("b", t1)]
    assert seen_before("a", history) == "seen in 2 of the last 4 runs, first on 2026-11-20 10:02 UTC"
    assert seen_before("c", history) is None


def test_suggesters_add_replace_and_never_break_the_report():
    failure = Failure(step="Fetch source", message="git ref 'x' was not found in y")
    context = FailureContext(run_id="r", app_name="shop")

    def adds(f, ctx):
        return [{"kind": "ai", "title": "t", "detail": f"{ctx.app_name}: {f.step}"}]

    def breaks(f, ctx):
        raise RuntimeError("model offline")

    def replaces(f, ctx):
        return [Suggestion(kind="only", title="t", detail="d")]

    register_suggester(adds, name="chat")
    register_suggester(breaks)
    try:
        found = suggest(failure, context)
    finally:
        unregister_suggester(adds)
        unregister_suggester(breaks)
    assert [(s.kind, s.source) for s in found] == [("git-ref-not-found", "built-in"),
                                                    ("ai", "chat")]
    assert found[1].detail == "shop: Fetch source"
    register_suggester(replaces, replace=True)
    try:
        assert [s.kind for s in suggest(failure, context)] == ["only"]
    finally:
        unregister_suggester(replaces)
    assert [s.kind for s in suggest(failure, context)] == ["git-ref-not-found"]


# --- hostile input: nothing in a failure's text can stall a run ---------------------------

MB = 1_000_000


def _literal_prefix(pattern: str) -> str:
    """The literal text a pattern starts with (what a hostile line repeats to make a rule try
    again and again)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            out, i = out + pattern[i + 1], i + 2
        elif pattern[i] in ".^$*+?{}[]()|\\":
            break
        else:
            out, i = out + pattern[i], i + 1
    return out


def _hostile_texts() -> list[tuple[str, str]]:
    prefixes = {_literal_prefix(p.pattern) for rule in RULES for p in rule.patterns} - {""}
    # and the start of every real line a rule recognises (its words, its punctuation)
    starts = {line[:max(1, len(line) // 2)][:40] for case in WORDING
              for line in case["text"].splitlines() if line.strip()} - prefixes
    texts = [("slashes", "/" * MB), ("spaces", " " * MB), ("quotes", '"' * MB),
             ("newlines", "\n" * MB), ("ansi", "\x1b[91m" * (MB // 5))]
    for prefix in sorted(prefixes | starts):
        texts.append((f"{prefix!r} repeated", (prefix * (MB // len(prefix) + 1))[:MB]))
    for prefix in sorted(prefixes):
        for fill in "/ \"'":
            texts.append((f"{prefix!r} then {fill!r}", prefix + fill * MB))
    return texts


def test_every_rule_reads_a_one_megabyte_line_of_any_content_in_under_50_ms():
    slow = []
    for name, text in _hostile_texts():
        best = float("inf")
        for _ in range(3):  # the best of three: a busy machine does not fail the test
            started = time.perf_counter()
            diagnose(text)
            best = min(best, time.perf_counter() - started)
            if best < 0.05:
                break
        if best >= 0.05:
            slow.append((name[:80], round(best, 3)))
    assert slow == []


def test_a_huge_failure_is_read_in_bounded_parts():
    line = "x" * MB + " no space left on device"
    [found] = diagnose(line)
    assert found.kind == "disk-full" and len(found.evidence) <= 500
    failure = Failure(step="Build images", message="y" * MB)
    started = time.perf_counter()
    sig = signature(failure)
    assert time.perf_counter() - started < 0.05 and len(sig) < 300


# --- the headline ------------------------------------------------------------------------

def test_the_headline_is_the_line_that_shows_the_cause_never_a_usage_hint():
    from deploy_runs.diagnosis import cause_line

    port = ["docker: Error response from daemon: driver failed programming external "
            "connectivity on endpoint shop-web (3f2a): Bind for 0.0.0.0:8080 failed: port is "
            "already allocated", "", "Run 'docker run --help' for more information"]
    assert cause_line(port, "Start application").endswith("port is already allocated")
    buildkit = ["#8 0.412 make: *** No targets specified and no makefile found.  Stop.",
                '#8 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2',
                "------", " > [4/4] RUN make:", "------", "   4 | >>> RUN make",
                'ERROR: failed to solve: process "/bin/sh -c make" did not complete '
                "successfully: exit code: 2"]
    assert cause_line(buildkit) == ('process "/bin/sh -c make" did not complete successfully: '
                                    "exit code: 2")
    # nothing diagnosed: the last line that reads as an error
    assert cause_line(["Step 3/4 : RUN ./configure", "checking for cc... no",
                       "configure: error: no acceptable C compiler found in $PATH",
                       "See 'docker build --help'."]) == (
        "configure: error: no acceptable C compiler found in $PATH")
    assert cause_line(["hello", "world"]) is None
    assert len(cause_line(["error: " + "x" * 5000])) == 300


def test_a_failed_command_is_headed_by_its_cause_not_its_exit_code():
    from deploy_runs.errors import CommandFailed
    from deploy_runs.run_record.writer import failure_from_exception

    exc = CommandFailed("docker build --tag x .", 1, [
        "#5 0.192 error: missing dependency libfoo",
        "#5 ERROR: executor failed running [/bin/sh -c make]: exit code: 3"])
    failure = failure_from_exception("Build images", exc)
    assert failure.message == "executor failed running [/bin/sh -c make]: exit code: 3"
    assert (failure.command, failure.exit_code) == ("docker build --tag x .", 1)
    # nothing in the output reads as an error: what happened, with the command
    quiet = failure_from_exception("Build images", CommandFailed("true", 1, ["ok"]))
    assert quiet.message == "command exited with code 1: $ true"


def test_a_failed_step_log_line_carries_no_empty_traceback():
    import logging

    from deploy_runs.prefect_compat.log_delivery import _NoEmptyTraceback

    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                               "Task run failed with state: Failed('x')", None,
                               (None, None, None))
    assert _NoEmptyTraceback().filter(record) and record.exc_info is None
    assert "NoneType" not in logging.Formatter().format(record)
    try:
        raise ValueError("real")
    except ValueError:
        import sys

        real = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "m", None,
                                 sys.exc_info())
    assert _NoEmptyTraceback().filter(real) and real.exc_info[0] is ValueError


def test_a_container_listening_on_another_port_is_named_with_the_setting():
    [case] = [c for c in WORDING if c["case"] == "ours-wrong-container-port"]
    found = diagnose(case["text"], "Health check", app=app_with())
    assert found[0].kind == "health-check-failed"
    assert ("listens on port 3000, but services[web].container_port is 8080"
            in found[0].detail), found[0].detail


def test_diagnosis_reads_the_first_line_and_the_last_ones():
    from deploy_runs.diagnosis import MAX_LINES, _readable

    assert _readable("a") == ["a"] and _readable("a\n") == ["a", ""]
    assert _readable("a\nb\nc") == ["a", "b", "c"]
    lines = _readable("\n".join(str(i) for i in range(1000)))
    assert len(lines) == MAX_LINES and lines[:2] == ["0", str(1000 - MAX_LINES + 1)]
    assert lines[-1] == "999"


def test_a_suggester_declared_by_an_installed_package_s_entry_point_is_used(tmp_path):
    """A package installed beside deploy-runs (here: a distribution on the path, found by
    importlib.metadata as pip installs one) that declares a function in the entry-point group
    `deploy_runs.suggesters` adds its suggestions; `replace = True` on it replaces the
    built-in ones. Checked in a fresh interpreter, as a worker would load it."""
    import subprocess
    import sys
    import textwrap

    site = tmp_path / "site"
    (site / "acme_hints-1.0.dist-info").mkdir(parents=True)
    (site / "acme_hints-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-hints\nVersion: 1.0\n")
    (site / "acme_hints-1.0.dist-info" / "entry_points.txt").write_text(
        "[deploy_runs.suggesters]\nacme = acme_hints:suggest\nacme-only = acme_hints:only\n")
    (site / "acme_hints.py").write_text(textwrap.dedent('''
        def suggest(failure, context):
            return [{"kind": "acme", "title": "Ask the ACME wiki",
                     "detail": f"{context.app_name} failed at {failure.step}"}]

        def only(failure, context):
            return []  # nothing to say: the built-in suggestions stay
        only.replace = True
    '''))
    script = textwrap.dedent('''
        from deploy_runs.diagnosis import FailureContext, suggest
        from deploy_runs.models import Failure
        found = suggest(Failure(step="Fetch source", message="git ref 'x' was not found in y"),
                        FailureContext(run_id="r", app_name="shop"))
        print([(s.kind, s.source, s.detail) for s in found])
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}"
                               f"{os.environ.get('PYTHONPATH', '')}"}, timeout=120)
    assert done.returncode == 0, done.stderr
    found = ast.literal_eval(done.stdout)  # the list of tuples the script printed
    assert found[0][:2] == ("git-ref-not-found", "built-in")
    assert found[1] == ("acme", "acme", "shop failed at Fetch source")
    assert len(found) == 2
