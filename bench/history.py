"""History at scale: a fresh Prefect server (SQLite, the default store) seeded with realistic
runs of 20 apps (task runs, states, durations, ~12% failures, log lines), then the history
queries timed at 1,000 and at 10,000 runs.

    python bench/history.py [--runs 10000] [--repeats 5]

Prints each query's median and max over the repeats, and the growth from the small store to
the big one. Goal: every query under 1 s at 10,000 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port  # noqa: E402
from seed_history import realistic, write  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times)


def measure(client, repeats: int) -> dict[str, tuple[float, float]]:
    completed = client.runs(app="app-00", status="Completed", limit=1)[0]
    failed = client.runs(app="app-00", status="Failed", limit=1)[0]
    queries = {
        "runs() first page (50)": lambda: client.runs(limit=50),
        "runs(app=...) first page": lambda: client.runs(app="app-03", limit=50),
        "runs(status=Failed, since 7d)": lambda: client.runs(
            status="Failed", since=datetime.now(UTC) - timedelta(days=7), limit=50),
        "compare(completed, failed)": lambda: client.compare(completed.id, failed.id),
        "stats(app-00, 30 days)": lambda: client.stats("app-00", days=30),
        "recurring_failures() 90 days": lambda: client.recurring_failures(),
        "search_logs('already allocated')": lambda: client.search_logs("already allocated",
                                                                      limit=50),
    }
    for fn in queries.values():  # warm up (first API client, caches)
        fn()
    return {name: timed(fn, repeats) for name, fn in queries.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from prefect.settings import (
        PREFECT_API_DATABASE_CONNECTION_URL,
        PREFECT_API_URL,
        temporary_settings,
    )

    from deploy_runs.client import DeployRuns
    from deploy_runs.prefect_local import start_server, stop

    state = Path(tempfile.mkdtemp(prefix="deploy-runs-history-"))
    url = start_server(free_port(), state=state)
    database = f"sqlite+aiosqlite:///{state / 'home' / 'prefect.db'}"
    results: dict[int, dict[str, tuple[float, float]]] = {}
    try:
        now = datetime.now(UTC)
        plan = realistic(args.runs, 20, now)
        small = plan[:: max(1, args.runs // args.small)][: args.small]
        small_ids = set(map(id, small))
        rest = [r for r in plan if id(r) not in small_ids]
        with temporary_settings({PREFECT_API_URL: url,
                                 PREFECT_API_DATABASE_CONNECTION_URL: database}):
            client = DeployRuns()
            for size, batch in ((len(small), small), (len(plan), rest)):
                started = time.perf_counter()
                asyncio.run(write(batch))
                print(f"seeded {len(batch)} runs ({size} in the store) in "
                      f"{time.perf_counter() - started:.1f}s", flush=True)
                busy = client.stats("app-00", days=90).runs
                print(f"  app-00 has {busy} runs in the last 90 days", flush=True)
                results[size] = measure(client, args.repeats)
    finally:
        stop(state)

    sizes = sorted(results)
    print(f"\nhistory queries on SQLite, median / max of {args.repeats} (seconds)")
    header = "".join(f"{size:>18,} runs" for size in sizes)
    print(f"{'query':38}{header}   growth")
    for name in results[sizes[0]]:
        cells = "".join(f"{results[s][name][0]:>12.3f} / {results[s][name][1]:.3f}"
                        for s in sizes)
        growth = results[sizes[-1]][name][0] / max(results[sizes[0]][name][0], 1e-9)
        print(f"{name:38}{cells}   x{growth:.2f}")
    worst = max(results[sizes[-1]].values())[0]
    print(f"\nslowest median at {sizes[-1]:,} runs: {worst:.3f}s (goal: under 1 s)")


if __name__ == "__main__":
    main()
