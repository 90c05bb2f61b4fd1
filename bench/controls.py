"""Benchmark: run control latencies on worker runs, over repeated runs in one go.

- pause latency:  end of the running step -> run Paused   (server timestamps)
- resume latency: resume request -> next step Running
- stop latency:   stop request -> run Stopped, and stop request -> remote command gone

Anchor: Prefect's own cancel reaches Cancelled in about 5 s and never reaches remote commands.

    python bench/controls.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from harness import bench_environment, summary


def slow_build(seconds: int, marker: str) -> dict[str, str]:
    return {"Dockerfile": (f"FROM busybox:latest\nRUN sleep {seconds} && echo {marker}\n"
                           'COPY site/ /www/\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')}


def server_has(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                pass
    return False


def poll(condition, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def measure_pause_resume(bench, client) -> tuple[float, float]:
    """Pause during a 2 s build, then resume."""
    from prefect.client.orchestration import get_client

    from deploy_runs import RunStatus, StepStatus

    marker = f"bench-{uuid.uuid4().hex}"
    name, _ = bench.app("pause", slow_build(2, marker))
    run = client.deploy(name)
    poll(lambda: server_has(marker), 120)
    client.pause(run.id)
    poll(lambda: client.get_run(run.id).status is RunStatus.PAUSED, 60, 0.02)
    with get_client(sync_client=True) as prefect:
        paused_at = prefect.read_flow_run(run.id).state.timestamp
    build_end = client.get_run(run.id).step("Build images").ended_at
    requested = datetime.now(UTC)
    client.resume(run.id)
    started = poll(lambda: (r := client.get_run(run.id)).step("Start application")
                   .status is not StepStatus.PENDING and r, 60, 0.02)
    client.wait(run.id, 120)
    return ((paused_at - build_end).total_seconds(),
            (started.step("Start application").started_at - requested).total_seconds())


def measure_stop(bench, client) -> tuple[float, float]:
    """Stop during a long build command: (request -> remote command gone, -> run Stopped)."""
    from deploy_runs import RunStatus

    marker = f"bench-{uuid.uuid4().hex}"
    name, _ = bench.app("stop", slow_build(120, marker))
    run = client.deploy(name)
    poll(lambda: server_has(marker), 120)
    start = time.perf_counter()
    client.stop(run.id)
    poll(lambda: not server_has(marker), 30, 0.005)
    gone = time.perf_counter() - start
    poll(lambda: client.get_run(run.id).status is RunStatus.STOPPED, 30, 0.02)
    return gone, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from deploy_runs import DeployRuns

    pause, resume, stop, gone = [], [], [], []
    with bench_environment() as bench:
        client = DeployRuns()
        for _ in range(args.repeats):
            paused, resumed = measure_pause_resume(bench, client)
            pause.append(paused)
            resume.append(resumed)
            killed, stopped = measure_stop(bench, client)
            gone.append(killed)
            stop.append(stopped)
    print(f"\nRun controls on worker runs, {args.repeats} repeats:")
    print(summary("pause: step end -> run Paused", pause))
    print(summary("resume: request -> next step Running", resume))
    print(summary("stop: request -> remote command gone", gone))
    print(summary("stop: request -> run Stopped (as the API reports)", stop))
    print("anchor: Prefect's cancel -> Cancelled ~5 s, remote commands never stopped")


if __name__ == "__main__":
    main()
