"""History's pure parts: statistics against a hand-computed history, config differences,
where two outputs diverge, and grouping failures by signature."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun, State, StateType

from deploy_runs.diagnosis import diagnose, signature
from deploy_runs.history import (
    FailureEntry,
    Row,
    config_diff,
    crashed_entry,
    first_divergence,
    group_failures,
    stats_from_rows,
)
from deploy_runs.models import Failure

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
C, F, X = StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED


def row(days_ago: int, hour: int, state: StateType, seconds: float) -> Row:
    day = (NOW - timedelta(days=days_ago)).replace(hour=hour, minute=0)
    return Row(uuid4(), state, day, seconds)


HISTORY = [
    row(10, 10, C, 10), row(9, 10, F, 5),                       # the previous 7 days
    row(6, 10, C, 10),
    row(5, 10, F, 4), row(5, 11, F, 6), row(5, 12, C, 20),      # fails twice, recovers
    row(3, 9, C, 30),
    row(1, 8, X, 3), row(1, 9, C, 40),                          # one stopped
]


def test_stats_match_the_hand_computed_figures():
    s = stats_from_rows("shop", 7, NOW, HISTORY, {"Build images": [3.0, 1.0, 2.0]}, 3)
    assert (s.runs, s.completed, s.failed, s.stopped) == (7, 4, 2, 1)
    assert s.success_rate == round(4 / 6, 4)
    assert s.median_duration == 25.0          # of 10, 20, 30, 40
    assert s.p90_duration == 37.0             # 30 + 0.7 * (40 - 30)
    # from the end of the first failure of the streak (day -5 10:00:04) to the end of the
    # next completed run (day -5 12:00:20)
    assert s.time_to_recover == 2 * 3600 + 16 and s.recoveries == 1
    days = {d.period: (d.deploys, d.failed) for d in s.per_day}
    assert len(days) == 8 and days["2026-11-22"] == (3, 2) and days["2026-11-26"] == (2, 0)
    assert sum(d.deploys for d in s.per_day) == 7
    assert sum(w.deploys for w in s.per_week) == 7
    assert s.step_medians == {"Build images": 2.0}
    assert s.durations == [10, 20, 30, 40]
    assert s.trend["deploys"].previous == 2 and s.trend["deploys"].change == 5
    assert s.trend["success_rate"].previous == 0.5
    assert s.trend["success_rate"].change == round(4 / 6 - 0.5, 4)
    assert s.trend["median_duration"].previous == 10


def test_stats_of_an_empty_window():
    s = stats_from_rows("shop", 7, NOW, [], {}, 0)
    assert s.runs == 0 and s.success_rate is None and s.median_duration is None
    assert s.time_to_recover is None and len(s.per_day) == 8


def test_config_diff_names_variables_never_values():
    a = {"web": {"ports": "80:8080", "env": {"A": "h1", "B": "h2"}, "secrets": ["TOKEN"],
                 "health": {"path": "/", "timeout": 30}},
         "old": {"ports": "81:1"}}
    b = {"web": {"ports": "81:8080", "env": {"A": "h1", "B": "h3", "C": "h4"},
                 "secrets": ["TOKEN", "KEY"], "health": {"path": "/up", "timeout": 30}},
         "new": {"ports": "82:1"}}
    diff = config_diff(a, b)
    assert diff.env_added == ["web.C"] and diff.env_changed == ["web.B"]
    assert diff.secrets_added == ["web.KEY"] and diff.env_removed == []
    assert diff.ports == ["web: 80:8080 -> 81:8080"]
    assert diff.health_checks == ["web.path: / -> /up"]
    assert diff.services_added == ["new"] and diff.services_removed == ["old"]
    assert "h3" not in diff.model_dump_json()
    assert config_diff(a, a).empty


def test_first_divergence_ignores_volatile_parts():
    a = ["$ docker build", "Step 1/3 : FROM busybox", " ---> Running in 1a2b3c4d5e", "ok 12 s",
         "Step 3/3"]
    b = ["$ docker build", "Step 1/3 : FROM busybox", " ---> Running in 9f8e7d6c5b", "ok 13 s",
         "error: missing dependency"]
    d = first_divergence("Build images", a, b)
    assert d is not None and d.line == 5
    assert d.a[-1] == "Step 3/3" and d.b[-1] == "error: missing dependency"
    assert first_divergence("Build images", a, a) is None
    assert first_divergence("Build images", a[:2], a).line == 3


def failed_run(app: str, message: str, step: str, days_ago: int) -> FailureEntry:
    failure = Failure(step=step, message=message)
    failure.suggestions = diagnose(failure.text(), step)
    return FailureEntry(uuid4(), signature(failure), app, NOW - timedelta(days=days_ago),
                        f"{step} failed: {message}")


def test_failures_group_across_volatile_parts():
    crashed = FlowRun(id=uuid4(), flow_id=uuid4(), name="x", start_time=NOW,
                      state=State(type=StateType.CRASHED, message="no heartbeat for 90s"))
    entries = [
        failed_run("shop", "git ref 'release-42' was not found in git://10.0.0.5/shop.git",
                   "Fetch source", 1),
        failed_run("blog", "service web did not become healthy within 30s (last probe: "
                   "http://127.0.0.1:8081/: HTTP/1.1 500 Error); container blog-web is running",
                   "Health check", 2),
        failed_run("shop", "git ref 'release-41' was not found in git://10.0.0.7/shop.git",
                   "Fetch source", 3),
        failed_run("shop", "git ref 'release-40' was not found in git://10.0.0.5/shop.git",
                   "Fetch source", 9),
        crashed_entry(crashed),
    ]
    groups = group_failures(entries)
    assert [(g.kind, g.count) for g in groups] == [("git-ref-not-found", 3),
                                                    ("crashed", 1), ("health-check-failed", 1)]
    top = groups[0]
    assert top.step == "Fetch source" and top.apps == ["shop"]
    assert top.first_seen == NOW - timedelta(days=9) and top.last_seen == NOW - timedelta(days=1)
    assert top.run_ids == [entries[0].run_id, entries[2].run_id, entries[3].run_id]
    assert "release-<n>" in top.message and "10.0.0" not in top.message
    assert groups[1].example == "no heartbeat for 90s"
