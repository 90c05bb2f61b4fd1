"""Soak: the Prefect server stopped (or killed) during a build, again and again.

Each round deploys an app whose build prints numbered lines for a while, stops the bench's
Prefect server while it prints, keeps it away for --outage seconds, starts it again, and waits
for the run. It counts what the issue asks for: runs completed, log lines lost or doubled, and
application slots leaked (the next run of the app had to wait for, or free, a slot nobody
held). `--leases memory` runs the same with Prefect's default lease storage, the baseline.

    python bench/faults.py [--rounds 20] [--outage 10] [--signal term|kill] [--leases memory]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid

from harness import bench_environment, summary

FREED = "slot held by no active run; freed"


def ticking(ticks: int, marker: str) -> dict[str, str]:
    return {"Dockerfile": (
        "FROM busybox:latest\n"
        f"RUN echo {marker} && for i in $(seq 1 {ticks}); do echo tick-$i; sleep 0.25; done\n"
        'COPY site/ /www/\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--ticks", type=int, default=100, help="build lines, one per 0.25 s")
    parser.add_argument("--signal", choices=["term", "kill"], default="term")
    parser.add_argument("--leases", choices=["file", "memory"], default="file")
    args = parser.parse_args()
    if args.leases == "memory":
        os.environ["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = \
            "prefect.server.concurrency.lease_storage.memory"
    sig = signal.SIGTERM if args.signal == "term" else signal.SIGKILL

    from prefect.client.orchestration import get_client

    from deploy_runs import DeployRuns, RunStatus, StepStatus
    from deploy_runs.concurrency import limit_name
    from deploy_runs.gitrepo import publish
    from deploy_runs.prefect_local import start_server, stop

    with bench_environment() as bench:
        client = DeployRuns()
        app, _ = bench.app("faults")
        source = bench.tmp / app
        completed = lost = doubled = leaked = 0
        waits, ends = [], []
        for round_ in range(1, args.rounds + 1):
            for path, content in ticking(args.ticks, uuid.uuid4().hex).items():
                (source / path).write_text(content)
            publish(source, bench.info.git_dir / f"{app}.git", f"round {round_}")
            requested = time.monotonic()
            run = client.deploy(app)
            while True:  # until the build prints
                look = client.get_run(run.id)
                if look.step("Build images").status is StepStatus.RUNNING and any(
                        line.text.startswith("tick-") for line in client.logs(run.id)):
                    break
                if look.status.is_final:
                    break
                time.sleep(0.2)
            stop(bench.state, only=("server",), sig=sig)
            time.sleep(args.outage)
            start_server(bench.port, bench.state)
            done = client.wait(run.id, timeout=600)
            ends.append(time.monotonic() - requested)
            texts = [line.text for line in client.logs(run.id)]
            ticks = [int(t[5:]) for t in texts if t.startswith("tick-") and t[5:].isdigit()]
            lost += len(set(range(1, args.ticks + 1)) - set(ticks))
            doubled += len(ticks) - len(set(ticks))
            completed += done.status is RunStatus.COMPLETED
            # the slot: given back when the run ended, and not waited for by the next run
            with get_client(sync_client=True) as prefect:
                held = prefect.read_global_concurrency_limit_by_name(
                    limit_name(app)).active_slots
            slot_waited = any("Waiting for" in t or FREED in t for t in texts)
            leaked += bool(held) or slot_waited
            waits.append(float(slot_waited))
            print(f"round {round_:2}: {done.status}, {len(set(ticks))}/{args.ticks} lines "
                  f"({len(ticks) - len(set(ticks))} doubled), slot "
                  f"{'held after the run' if held else 'free'}"
                  f"{', this run waited for a slot nobody held' if slot_waited else ''}, "
                  f"{ends[-1]:.1f}s", flush=True)
        print()
        print(f"server {'stopped' if sig == signal.SIGTERM else 'killed'} for {args.outage:g}s "
              f"during each build; leases: {args.leases}")
        print(f"runs completed: {completed}/{args.rounds}")
        print(f"log lines lost: {lost}, doubled: {doubled} (of {args.rounds * args.ticks})")
        print(f"slots leaked: {leaked}")
        print(summary("deploy requested -> run ended", ends))


if __name__ == "__main__":
    main()
