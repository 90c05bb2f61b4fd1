"""Benchmark: N concurrent deploys across 3 namespace hosts with 2 process workers, with the
Prefect server on PostgreSQL and on SQLite (same run, same machine).

For each database and N (default 1, 5, 20): N runs of N different apps (hello, each on one of
the 3 hosts, each build printing a few lines) are requested at once through the Python API;
printed: runs per minute (N / wall time from first request to last run ended), median and p95
run duration (flow run start -> end), and trigger latency (request -> first step Running),
median and p95; requests refused and runs not Completed are counted ("failed"). N=1 is
repeated (--single-repeats, one deploy at a time) so its median is not one sample.
Workers: deploy-runs' warm-start worker (`deploy-runs worker`) and, as the baseline measured in
the same run, Prefect's stock process worker (`prefect worker start --type process`).
Anchor: Prefect's default worker polling alone adds 7.5-9 s to a run's start.

    python bench/scale.py [--sizes 1,5,20] [--databases postgresql,sqlite] [--workers warm,stock]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import ROOT, free_port

HOSTS = ("s1", "s2", "s3")
PORTS = itertools.count(21000)
WORKERS = ("worker-a", "worker-b")
DOCKERFILE = ("FROM busybox:latest\nCOPY site/ /www/\nRUN seq 1 50 | sed 's/^/printed-/'\n"
              'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def make_apps(count: int, tmp: Path, info) -> list[str]:
    import shutil

    import yaml

    from deploy_runs.gitrepo import publish
    from deploy_runs.spec import load_server, parse_spec, register, to_application

    names = []
    for i in range(count):
        host = info.host(HOSTS[i % len(HOSTS)])
        name = f"bench-scale-{uuid.uuid4().hex[:6]}"
        source = tmp / name
        shutil.copytree(ROOT / "examples" / "hello", source)
        (source / "Dockerfile").write_text(DOCKERFILE)
        (source / "site" / "index.html").write_text(f"{name}\n")
        publish(source, info.git_dir / f"{name}.git", "bench")
        spec = yaml.safe_load((source / "app.yaml").read_text())
        spec.update(name=name, repository=f"{host.git_base_url}{name}.git",
                    server=f"sandbox-{host.name}")
        spec["services"][0]["host_port"] = next(PORTS)  # each app its own port on its host
        spec["services"][0].setdefault("health_check", {})["interval"] = 0.1
        register(to_application(parse_spec(spec), load_server(f"sandbox-{host.name}")))
        names.append(name)
    return names


async def one_round(rounds: list[list[str]]) -> dict[str, float]:
    """Each round's deploys requested at once, the rounds one after another; figures over all."""
    durations, latency, wall, failed = [], [], 0.0, 0.0
    for names in rounds:
        d, lat, w, f = await _round(names)
        durations += d
        latency += lat
        wall += w
        failed += f
    if not durations:
        return {"runs/min": 0.0, "median s": 0.0, "p95 s": 0.0, "trigger median s": 0.0,
                "trigger p95 s": 0.0, "wall s": wall, "failed": failed}
    return {"runs/min": 60 * len(durations) / wall, "median s": statistics.median(durations),
            "p95 s": p95(durations), "trigger median s": statistics.median(latency),
            "trigger p95 s": p95(latency), "wall s": wall, "failed": failed}


async def _round(names: list[str]) -> tuple[list[float], list[float], float, float]:
    from deploy_runs import AsyncDeployRuns, RunStatus

    runs = AsyncDeployRuns()
    began = time.monotonic()
    requested = {}

    async def request(name):
        at = time.time()
        run = await runs.deploy(name)
        requested[run.id] = at
        return run

    submitted = await asyncio.gather(*(request(n) for n in names), return_exceptions=True)
    refused = [r for r in submitted if isinstance(r, BaseException)]
    submitted = [r for r in submitted if not isinstance(r, BaseException)]
    done = await asyncio.gather(*(runs.wait(r.id, timeout=900) for r in submitted))
    wall = time.monotonic() - began
    bad = [r for r in done if r.status is not RunStatus.COMPLETED]
    if refused or bad:
        why = str(refused[0])[:160] if refused else (bad[0].error or bad[0].message)
        print(f"    {len(refused)} request(s) refused, {len(bad)} run(s) not Completed: {why}")
    done = [r for r in done if r.status is RunStatus.COMPLETED]
    durations = [r.duration for r in done]
    latency = [min(s.started_at for s in r.steps if s.started_at).timestamp() - requested[r.id]
               for r in done]
    return durations, latency, wall, float(len(names) - len(done))


def remove_containers(info) -> None:
    import docker

    for host in info.hosts:
        if host.name in HOSTS:
            engine = docker.DockerClient(base_url=host.docker_host)
            for container in engine.containers.list(all=True):
                if container.name.startswith("bench-scale-"):
                    container.remove(force=True)
            engine.close()


def measure(database: str, sizes: list[int], info, warm: bool,
            single_repeats: int) -> list[tuple[int, dict[str, float]]]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deploy_runs.prefect_local import drop_postgres, start_postgres, start_server, start_worker, stop
    from deploy_runs.sandbox_blocks import block_name, server_block

    tmp = Path(tempfile.mkdtemp(prefix=f"deploy-runs-scale-{database}-"))
    state = tmp / "prefect"
    state.mkdir()
    rows = []
    try:
        db_url = start_postgres(state, free_port()) if database == "postgresql" else None
        url = start_server(free_port(), state, database_url=db_url)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            for name in WORKERS:
                start_worker(url, state, name=name, warm=warm)
            for host in info.hosts:
                if host.name in HOSTS:
                    server_block(host).save(block_name(host), overwrite=True)
            asyncio.run(one_round([make_apps(1, tmp, info)]))  # warm-up: caches, imports
            for n in sizes:
                rounds = [make_apps(n, tmp, info)
                          for _ in range(single_repeats if n == 1 else 1)]
                rows.append((n, asyncio.run(one_round(rounds))))
                print(f"  {database} {'warm' if warm else 'stock'} N={n}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in rows[-1][1].items()), flush=True)
    finally:
        stop(state)
        drop_postgres(state)
        remove_containers(info)
    return rows


def ratios(title: str, tops: list | None, bottoms: list | None, keys: tuple[str, str]) -> None:
    """Per N, the two figures `keys` of one setup over the other's."""
    if not (tops and bottoms):
        return
    print(f"\nratio {title} ({keys[0]}; {keys[1]}):")
    for (n, a), (_, b) in zip(tops, bottoms, strict=True):
        if all(b[k] for k in keys):
            print(f"  N={n}: " + "; ".join(f"{a[k] / b[k]:.2f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--workers", default="warm,stock",
                        help="warm: deploy-runs worker; stock: Prefect's process worker")
    parser.add_argument("--single-repeats", type=int, default=5,
                        help="N=1 deploys, one after another")
    parser.add_argument("--json", action="store_true", help="(internal) one setup, JSON out")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from deploy_runs import sandbox

    sandbox.install()
    sandbox.up()
    for name in HOSTS:
        sandbox.add_host(name)
    if args.json:
        print("RESULT " + json.dumps(measure(args.databases, sizes, sandbox.status(),
                                             args.workers == "warm", args.single_repeats)))
        return
    # each setup in a process of its own: Prefect clients of the first server (events, logs)
    # must not linger and slow the next
    results = {}
    for db in args.databases.split(","):
        for kind in args.workers.split(","):
            out = subprocess.run([sys.executable, __file__, "--json", "--databases", db,
                                  "--workers", kind, "--sizes", args.sizes,
                                  "--single-repeats", str(args.single_repeats)],
                                 capture_output=True, text=True)
            rows = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            print("\n".join(line for line in out.stdout.splitlines() if line.startswith("  ")),
                  flush=True)
            if out.returncode or not rows:
                raise SystemExit(f"{db} {kind}: failed\n{out.stderr[-3000:]}")
            results[db, kind] = [tuple(row)
                                 for row in json.loads(rows[0].removeprefix("RESULT "))]

    print(f"\n{len(HOSTS)} hosts, {len(WORKERS)} workers, N concurrent deploys of N apps "
          f"(hello), requested at once; N=1: {args.single_repeats} deploys one after another")
    header = ("runs/min", "median s", "p95 s", "trigger median s", "trigger p95 s", "failed")
    print(f"{'database':<11}{'worker':<7}{'N':>4}" + "".join(f"{h:>18}" for h in header))
    for (db, kind), rows in results.items():
        for n, row in rows:
            print(f"{db:<11}{kind:<7}{n:>4}" + "".join(f"{row[h]:>18.2f}" for h in header))
    for kind in args.workers.split(","):
        ratios(f"PostgreSQL / SQLite, {kind} workers", results.get(("postgresql", kind)),
               results.get(("sqlite", kind)), ("runs/min", "trigger median s"))
    for db in args.databases.split(","):
        ratios(f"warm / stock worker, {db}", results.get((db, "warm")),
               results.get((db, "stock")), ("trigger median s", "runs/min"))
    print("anchor: Prefect's default worker polling alone adds 7.5-9 s to a run's start; "
          "goal: trigger median under 2 s")


if __name__ == "__main__":
    main()
