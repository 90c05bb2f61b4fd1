"""Benchmark: a first deploy of `hello` through deploy-runs vs the same commands as a plain shell
script over ssh (the floor, `bench/floor.sh`), measured in one run on the sandbox; and a first
deploy of `shop` (three services) vs a script doing shop's work serially in one session
(`bench/floor_shop.sh`), where deploy-runs builds, starts and probes the services side by side.

Each repeat deploys a fresh app (new name, new repository, new page content) so every deploy is
a real first deploy: provisioning runs, the repository is cloned, the last image layer is built.

    python bench/deploy.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid

from harness import ROOT, bench_environment, summary

SHOP = ("web", "api", "admin")


def own_content() -> dict[str, str]:
    return {f"{s}/content/first.txt": uuid.uuid4().hex for s in SHOP}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from deploy_runs import DeployRuns, RunStatus
    from flows.deploy import run_in_process

    engine, end_to_end, floor, shop_floor, shop_engine, shop_serial = [], [], [], [], [], []
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

            # shop: each service's content its own, so its layers are built for the first time
            name, _ = bench.app("shopfloor", example="shop", files=own_content())
            ports = bench.ports[name]
            start = time.perf_counter()
            subprocess.run([str(ROOT / "bench" / "floor_shop.sh"),
                            f"{local.username}@{local.host}", str(local.port),
                            str(local.private_key_path), str(known_hosts),
                            f"{local.git_base_url}{name}.git", name,
                            *(str(ports[s]) for s in SHOP)], check=True)
            shop_floor.append(time.perf_counter() - start)

            name, _ = bench.app("shop", example="shop", files=own_content())
            start = time.perf_counter()
            state = run_in_process(name)
            shop_engine.append(time.perf_counter() - start)
            assert state.is_completed(), state

            name, _ = bench.app("shop1", example="shop", files=own_content(),
                                build_parallelism=1)
            start = time.perf_counter()
            state = run_in_process(name)
            shop_serial.append(time.perf_counter() - start)
            assert state.is_completed(), state

    print(f"\nFirst deploy of hello, {args.repeats} repeats each (fresh app every time):")
    print(summary("floor: plain shell script over one ssh", floor))
    print(summary("deploy-runs engine (flow run, in-process)", engine))
    print(summary("deploy-runs via API + worker (request->done)", end_to_end))
    f, e, w = (statistics.median(v) for v in (floor, engine, end_to_end))
    print(f"engine / floor: {e / f:.2f}x  (+{e - f:.2f}s)")
    print(f"API+worker / floor: {w / f:.2f}x  (+{w - f:.2f}s)")
    print(f"\nFirst deploy of shop (3 services), {args.repeats} repeats each:")
    print(summary("floor: shop's work serially, one ssh session", shop_floor))
    print(summary("deploy-runs engine (services side by side)", shop_engine))
    print(summary("deploy-runs engine, one build at a time", shop_serial))
    sf, se = statistics.median(shop_floor), statistics.median(shop_engine)
    print(f"engine / serial floor: {se / sf:.2f}x  ({se - sf:+.2f}s; goal: at most 1.0x)")


if __name__ == "__main__":
    main()
