"""Benchmark: a first deploy of `hello` through deploy-runs vs the same commands as a plain shell
script over ssh (the floor, `bench/floor.sh`), measured in one run on the sandbox.

Each repeat deploys a fresh app (new name, new repository, new page content) so every deploy is
a real first deploy: provisioning runs, the repository is cloned, the last image layer is built.

    python bench/deploy.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from harness import ROOT, bench_environment, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from deploy_runs import DeployRuns, RunStatus
    from flows.deploy import run_in_process

    engine, end_to_end, floor = [], [], []
    with bench_environment() as bench:
        local = bench.info.host("local")
        known_hosts = bench.tmp / "known_hosts"
        known_hosts.write_text(local.known_hosts_line() + "\n")
        client = DeployRuns()
        # Warm-up: the first flow run in a process pays imports and client set-up once.
        run_in_process(bench.app("warmup")[0])
        for _ in range(args.repeats):
            name, port = bench.app("floor")
            start = time.perf_counter()
            subprocess.run([str(ROOT / "bench" / "floor.sh"), f"{local.username}@{local.host}",
                            str(local.port), str(local.private_key_path), str(known_hosts),
                            f"{local.git_base_url}{name}.git", name, str(port)], check=True)
            floor.append(time.perf_counter() - start)

            name, _ = bench.app("engine")
            start = time.perf_counter()
            state = run_in_process(name)
            engine.append(time.perf_counter() - start)
            assert state.is_completed(), state

            name, _ = bench.app("worker")
            start = time.perf_counter()
            run = client.wait(client.deploy(name).id, timeout=300, poll_interval=0.05)
            end_to_end.append(time.perf_counter() - start)
            assert run.status is RunStatus.COMPLETED, run.error

    print(f"\nFirst deploy of hello, {args.repeats} repeats each (fresh app every time):")
    print(summary("floor: plain shell script over one ssh", floor))
    print(summary("deploy-runs engine (flow run, in-process)", engine))
    print(summary("deploy-runs via API + worker (request->done)", end_to_end))
    f, e, w = (statistics.median(v) for v in (floor, engine, end_to_end))
    print(f"engine / floor: {e / f:.2f}x  (+{e - f:.2f}s)")
    print(f"API+worker / floor: {w / f:.2f}x  (+{w - f:.2f}s)")


if __name__ == "__main__":
    main()
