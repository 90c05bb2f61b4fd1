"""Diagnosis rules against the real failure outputs kept in tests/fixtures/failures (each one
produced in the sandbox by tests/integration/test_failures.py), and the parts around them:
signatures, history, suggesters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import Application, Service, SSHServer
from deploy_runs.diagnosis import (
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
