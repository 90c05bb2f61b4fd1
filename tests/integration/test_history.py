"""Run history against a real Prefect server: listing (order, filters, paging), statistics of
a known history, recurring failures, comparing a real completed and failed `shop` run, and
searching historical logs. Histories with known times are seeded with `bench/seed_history.py`
(Prefect's API cannot backdate states); the compared and searched runs are real deploys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

from deploy_runs import RunStatus, StepStatus
from deploy_runs.diagnosis import normalise

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from seed_history import make_run, write  # noqa: E402

pytestmark = pytest.mark.timeout(400)
NOW = datetime.now(UTC).replace(microsecond=0)
STEPS = (0.5, 1.0, 3.0, 2.0, 1.5)  # seconds per step; 8 s a run


@pytest.fixture
def seed(prefect_api, prefect_state):
    if not (prefect_state / "home" / "prefect.db").exists():
        pytest.fail("history tests seed the tests' own Prefect server (SQLite); "
                    "DEPLOY_RUNS_TEST_API_URL points elsewhere")

    def write_runs(runs) -> None:
        url = f"sqlite+aiosqlite:///{prefect_state / 'home' / 'prefect.db'}"
        with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
            asyncio.run(write(runs))

    return write_runs


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", *args],
                          capture_output=True, text=True, timeout=90,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runs_are_listed_most_recent_first_filtered_and_paged(client, seed):
    app = f"h-list-{uuid.uuid4().hex[:6]}"
    runs = [make_run(app, NOW - timedelta(hours=2 * i + 1), STEPS,
                     "Build images" if i % 5 == 0 else None,
                     "command exited with code 1: $ docker build", "The command '/bin/sh -c "
                     "make' returned a non-zero code: 1") for i in range(30)]
    seed(runs)
    listed = client.runs(app=app, limit=50)
    assert len(listed) == 30
    starts = [r.started_at for r in listed]
    assert starts == sorted(starts, reverse=True)
    assert {r.app for r in listed} == {app}
    assert listed[0].steps[2].duration == 3.0 and listed[1].duration == 8.0

    failed = client.runs(app=app, status=RunStatus.FAILED)
    assert len(failed) == 6 and all(r.status is RunStatus.FAILED for r in failed)
    assert all(r.error and r.error.suggestions[0].kind == "build-command-failed" for r in failed)
    assert len(client.runs(app=app, status=["Completed", "Failed"])) == 30
    recent = client.runs(app=app, since=NOW - timedelta(hours=20))
    assert len(recent) == 10 and all(r.started_at >= NOW - timedelta(hours=20) for r in recent)

    pages = [client.runs(app=app, limit=7, offset=offset) for offset in range(0, 30, 7)]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [r.id for page in pages for r in page] == [r.id for r in listed]

    table = cli("runs", "--app", app, "--status", "Failed", "--limit", "3")
    assert table.count(app) == 3 and "Failed" in table and "deploy" in table


def test_stats_of_a_known_history(client, seed):
    app = f"h-stats-{uuid.uuid4().hex[:6]}"

    def at(days_ago: float, hour: int):
        return (NOW - timedelta(days=days_ago)).replace(hour=hour, minute=0, second=0)

    fail = ("Health check", "service web did not become healthy within 30s (last probe: x); "
            "container c is running")
    seed([
        make_run(app, at(10, 10), (1, 1, 1, 1, 6)),                     # previous period: 10 s
        make_run(app, at(6, 10), (1, 1, 1, 1, 6)),                      # 10 s
        make_run(app, at(5, 10), (1, 1, 1, 1, 1), *fail),               # failed, ends 10:00:05
        make_run(app, at(5, 12), (2, 2, 10, 2, 4)),                     # 20 s: recovered
        make_run(app, at(3, 9), (3, 3, 15, 3, 6)),                      # 30 s
        make_run(app, at(1, 9), (4, 4, 20, 4, 8)),                      # 40 s
    ])
    s = client.stats(app, days=7)
    assert (s.runs, s.completed, s.failed) == (5, 4, 1)
    assert s.success_rate == 0.8
    assert s.median_duration == 25.0 and s.p90_duration == 37.0
    assert s.time_to_recover == 2 * 3600 + 15 and s.recoveries == 1
    assert s.step_medians["Build images"] == 12.5    # of 1, 10, 15, 20
    assert s.step_medians["Health check"] == 6.0     # of 6, 4, 6, 8
    assert sum(d.deploys for d in s.per_day) == 5 and len(s.per_day) == 8
    assert s.trend["deploys"].previous == 1 and s.trend["median_duration"].previous == 10.0
    shown = cli("stats", app, "--days", "7")
    assert "80%" in shown and "median 25.0s" in shown and any(c in shown for c in "▁▂▃▄▅▆▇█")


def test_recurring_failures_group_texts_that_differ_only_in_volatile_parts(client, seed):
    app = f"h-fail-{uuid.uuid4().hex[:6]}"
    port = ("Start application", "command exited with code 125: $ docker run",
            "docker: Error response from daemon: driver failed programming external "
            "connectivity on endpoint {a}-web ({i}): Bind for 0.0.0.0:{p} failed: port is "
            "already allocated")
    runs = [make_run(app, NOW - timedelta(days=d), STEPS, port[0], port[1],
                     port[2].format(a=app, i=uuid.uuid4().hex, p=8000 + d)) for d in (1, 4, 9)]
    runs.append(make_run(app, NOW - timedelta(days=2), STEPS, "Fetch source",
                         "git ref 'v1.2' was not found in git://h/x.git"))
    runs.append(make_run(app, NOW - timedelta(days=3), STEPS))
    seed(runs)
    groups = client.recurring_failures(app=app, days=30)
    assert [(g.kind, g.count) for g in groups] == [("port-in-use", 3), ("git-ref-not-found", 1)]
    top = groups[0]
    assert top.step == "Start application" and top.apps == [app]
    assert len(top.run_ids) == 3
    assert top.first_seen < top.last_seen
    shown = cli("failures", "--app", app)
    assert "port-in-use" in shown and "git-ref-not-found" in shown


def test_compare_a_real_completed_and_failed_shop_run(client, make_app):
    app = make_app("shop")
    good = client.wait(client.deploy(app.name).id, timeout=180)
    assert good.status is RunStatus.COMPLETED, good.error
    marker = uuid.uuid4().hex[:8]
    app.push({"api/Dockerfile": (
        "FROM busybox:latest\n"
        f"RUN echo installing deps {marker} && echo 'npm ERR! missing script: build' >&2 "
        "&& exit 2\n")}, "api: broken build")
    app.application.services[1].env = {"API_MODE": "debug", "FEATURE_X": "on"}
    app.application.save(app.name, overwrite=True)
    bad = client.wait(client.deploy(app.name).id, timeout=180)
    assert bad.status is RunStatus.FAILED and bad.error.step == "Build images"

    c = client.compare(good.id, bad.id, repo=app.bare_repo)
    by_step = {s.name: s for s in c.steps}
    assert by_step["Build images"].status_a is StepStatus.COMPLETED
    assert by_step["Build images"].status_b is StepStatus.FAILED
    assert by_step["Health check"].status_b is StepStatus.SKIPPED
    assert by_step["Fetch source"].delta is not None
    assert c.commits_between is not None and len(c.commits_between) == 1
    assert c.commits_between[0].endswith("api: broken build")
    assert sorted(c.rebuilt_a) == ["admin", "api", "web"] and c.rebuilt_b == []
    assert c.config is not None
    assert c.config.env_added == ["api.FEATURE_X"] and c.config.env_changed == ["api.API_MODE"]
    assert c.error_a is None and c.error_b.suggestions[0].kind == "build-command-failed"
    # the failing step's outputs diverge somewhere before the failing command's last line
    assert c.divergence is not None and c.divergence.step == "Build images"
    # exactly where: the first line of the two runs' Build images output (commands, stdout,
    # stderr as logged) that differs once ids, times and numbers are masked; every line
    # before it the same
    outputs = [[line.text for line in client.logs(r.id, step="Build images")
                if line.stream in ("command", "stdout", "stderr")] for r in (good, bad)]
    n = c.divergence.line
    assert [normalise(t) for t in outputs[0][:n - 1]] == [normalise(t) for t in outputs[1][:n - 1]]
    assert n > len(outputs[0]) or n > len(outputs[1]) or \
        normalise(outputs[0][n - 1]) != normalise(outputs[1][n - 1])
    for output, shown in ((outputs[0], c.divergence.a), (outputs[1], c.divergence.b)):
        if n <= len(output):
            assert output[n - 1] in shown, (n, shown)
    assert any("npm ERR! missing script" in line for line in c.error_b.output_tail)
    assert "debug" not in c.model_dump_json()  # env values never in a comparison

    shown = cli("compare", str(good.id), str(bad.id), "--repo", str(app.bare_repo))
    for text in ("Build images", "api: broken build", "env added: api.FEATURE_X",
                 "output diverges at line"):
        assert text in shown, shown
    as_json = json.loads(cli("compare", str(good.id), str(bad.id), "--json"))
    assert as_json["run_b"]["id"] == str(bad.id)

    # statistics and recurring failures over these two real runs (not seeded rows)
    stats = client.stats(app.name)
    assert (stats.runs, stats.completed, stats.failed, stats.stopped) == (2, 1, 1, 0)
    assert stats.success_rate == 0.5
    assert stats.durations == [pytest.approx(good.duration, abs=0.01)]
    assert stats.median_duration == pytest.approx(good.duration, abs=0.01)
    assert set(stats.step_medians) == {s.name for s in good.steps}
    assert stats.step_medians["Build images"] == pytest.approx(
        good.step("Build images").duration, abs=0.01)
    (recurring,) = client.recurring_failures(app=app.name)
    assert (recurring.kind, recurring.step, recurring.count) == (
        "build-command-failed", "Build images", 1)
    assert recurring.run_ids == [bad.id] and recurring.apps == [app.name]
    assert recurring.signature == bad.error.signature

    # search the historical logs for the failing build's line
    matches = client.search_logs(f"deps {marker}", app=app.name)
    assert matches and all(m.run_id == bad.id for m in matches)
    # the build's own line, in its step (the run's end, which names the cause, matches too)
    assert any(m.step == "Build images" and marker in m.line for m in matches), matches
    assert marker in cli("logs", "--search", f"deps {marker}", "--app", app.name)
