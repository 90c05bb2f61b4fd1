"""Benchmark: time-to-log and sustained throughput of live logs.

A command on the sandbox server prints numbered lines, each with the time it was printed
(taken there); a `DeployRuns.logs(run_id, follow=True)` consumer records when it receives each
line. The command runs through the same executor and step log as the deploy steps
(`tests/integration/commandflow.py`), so this measures deploy-runs' log path end to end:
SSH channel -> line splitting -> Prefect log records -> Prefect API -> follower.

    python bench/logs.py [--lines 2000] [--rate 200] [--flood-seconds 5] [--flood-rate 10000]

Anchor: Prefect's defaults deliver a log in about 1.3 s median, 2.1 s max.
Goal: p95 under 0.3 s; no line lost at 10,000 lines per second.
"""

from __future__ import annotations

import argparse
import contextvars
import statistics
import sys
import threading
import time
import uuid

from harness import ROOT, bench_environment

sys.path.insert(0, str(ROOT))

PRINTER = ("python3 -c 'import sys,time\n"
           "n,rate=int(sys.argv[1]),float(sys.argv[2]);start=time.time()\n"
           "for i in range(1,n+1):\n"
           "  due=start+i/rate\n"
           "  while time.time()<due: time.sleep(max(0,min(0.001,due-time.time())))\n"
           "  print(i,repr(time.time()),flush=(i%50==0 or rate<=1000))\n' {n} {rate}")


def measure(client, lines: int, rate: float) -> tuple[list[float], int, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from tests.integration.commandflow import run_log_cases

    app = f"bench-logs-{uuid.uuid4().hex[:6]}"
    received: dict[int, float] = {}
    context = contextvars.copy_context()
    runner = threading.Thread(target=context.run, args=(
        run_log_cases, app, [PRINTER.format(n=lines, rate=rate)]))
    runner.start()
    with get_client(sync_client=True) as prefect:
        deadline = time.monotonic() + 60
        while not (found := prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"app:{app}"])))):
            if time.monotonic() > deadline:
                raise TimeoutError("run did not appear")
            time.sleep(0.05)
    latencies = []
    duplicates = 0
    first = last = None
    for line in client.logs(found[0].id, follow=True):
        now = time.time()
        parts = line.text.split()
        if line.stream != "stdout" or len(parts) != 2 or not parts[0].isdigit():
            continue
        number, printed = int(parts[0]), float(parts[1])
        if number in received:
            duplicates += 1
            continue
        received[number] = now
        latencies.append(now - printed)
        first = first or now
        last = now
    runner.join()
    missing = lines - len(received)
    span = (last - first) if first and last and last > first else float("nan")
    assert duplicates == 0, f"{duplicates} duplicate lines"
    return latencies, missing, len(received) / span if span == span else float("nan")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--flood-seconds", type=float, default=5)
    parser.add_argument("--flood-rate", type=float, default=10_000)
    args = parser.parse_args()
    from deploy_runs import DeployRuns

    with bench_environment():
        client = DeployRuns()
        latencies, missing, _ = measure(client, args.lines, args.rate)
        flood_lines = int(args.flood_seconds * args.flood_rate)
        flood_latencies, flood_missing, sustained = measure(client, flood_lines, args.flood_rate)

    print(f"\nTime-to-log, {args.lines} lines at {args.rate:g} lines/s "
          "(printed on the server -> received by logs(follow=True)):")
    print(f"  median {statistics.median(latencies):.3f}s   p95 {quantile(latencies, .95):.3f}s   "
          f"max {max(latencies):.3f}s   lost {missing}")
    print(f"Flood, {flood_lines} lines at {args.flood_rate:g} lines/s:")
    print(f"  lost {flood_missing}   received {sustained:,.0f} lines/s sustained   "
          f"median {statistics.median(flood_latencies):.3f}s   "
          f"p95 {quantile(flood_latencies, .95):.3f}s   max {max(flood_latencies):.3f}s")
    print("anchor: Prefect defaults ~1.3 s median, 2.1 s max")


if __name__ == "__main__":
    main()
