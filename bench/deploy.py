"""Benchmark: a first deploy of `hello` through deploy-runs vs the same commands as a plain shell
script over ssh (the floor, `bench/floor.sh`), measured in one run on the sandbox.

Each repeat deploys a fresh app (new name, new repository, new page content) so every deploy is
a real first deploy: provisioning runs, the repository is cloned, the last image layer is built.

    python bench/deploy.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_source(tmp: Path, name: str) -> Path:
    source = tmp / name
    shutil.copytree(ROOT / "examples" / "hello", source)
    (source / "site" / "nonce.txt").write_text(uuid.uuid4().hex)
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deploy_runs import DeployRuns, RunStatus, sandbox
    from deploy_runs.gitrepo import publish
    from deploy_runs.prefect_local import start_server, start_worker, stop
    from deploy_runs.sandbox_blocks import save_server_blocks
    from deploy_runs.spec import load_server, parse_spec, register, to_application
    from flows.deploy import deploy_app

    sandbox.install()
    info = sandbox.up()
    local = info.host("local")
    tmp = Path(tempfile.mkdtemp(prefix="deploy-runs-bench-"))
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(local.known_hosts_line() + "\n")
    state = tmp / "prefect"
    state.mkdir()
    url = start_server(free_port(), state=state)
    import os

    os.environ["PREFECT_API_URL"] = url
    made: list[str] = []
    engine, end_to_end, floor = [], [], []
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            save_server_blocks(info)
            start_worker(url, state=state)
            client = DeployRuns()

            def new_app(kind: str) -> tuple[str, int]:
                name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
                publish(fresh_source(tmp, name), info.git_dir / f"{name}.git", "bench")
                port = free_port()
                spec = {"name": name, "repository": f"{local.git_base_url}{name}.git",
                        "server": "sandbox-local",
                        "services": [{"name": "web", "container_port": 8080, "host_port": port,
                                      "health_check": {"interval": 0.05}}]}
                application = to_application(parse_spec(spec), load_server("sandbox-local"))
                register(application)
                made.append(name)
                return name, port

            # Warm-up: the first flow run in a process pays imports and client set-up once.
            name, _ = new_app("warmup")
            deploy_app(name)
            for _ in range(args.repeats):
                name, port = new_app("floor")
                start = time.perf_counter()
                subprocess.run([str(ROOT / "bench" / "floor.sh"), f"{local.username}@{local.host}",
                                str(local.port), str(local.private_key_path), str(known_hosts),
                                f"{local.git_base_url}{name}.git", name, str(port)], check=True)
                floor.append(time.perf_counter() - start)

                name, _ = new_app("engine")
                start = time.perf_counter()
                state_ = deploy_app(name, return_state=True)
                engine.append(time.perf_counter() - start)
                assert state_.is_completed(), state_

                name, _ = new_app("worker")
                start = time.perf_counter()
                run = client.wait(client.deploy(name).id, timeout=300, poll_interval=0.05)
                end_to_end.append(time.perf_counter() - start)
                assert run.status is RunStatus.COMPLETED, run.error
    finally:
        cleanup(made, local, known_hosts)
        stop(state)
        shutil.rmtree(tmp, ignore_errors=True)

    def row(label: str, values: list[float]) -> None:
        print(f"{label:<44} median {statistics.median(values):6.2f}s   "
              f"min {min(values):6.2f}s   max {max(values):6.2f}s")

    print(f"\nFirst deploy of hello, {args.repeats} repeats each (fresh app every time):")
    row("floor: plain shell script over one ssh", floor)
    row("deploy-runs engine (flow run, in-process)", engine)
    row("deploy-runs via API + worker (request->done)", end_to_end)
    f, e, w = (statistics.median(v) for v in (floor, engine, end_to_end))
    print(f"engine / floor: {e / f:.2f}x  (+{e - f:.2f}s)")
    print(f"API+worker / floor: {w / f:.2f}x  (+{w - f:.2f}s)")


def cleanup(names: list[str], local, known_hosts: Path) -> None:
    import docker

    client = docker.DockerClient(base_url=local.docker_host)
    for container in client.containers.list(all=True):
        if any(container.name == f"{n}-web" for n in names):
            container.remove(force=True)
    subprocess.run(["ssh", "-q", "-p", str(local.port), "-i", str(local.private_key_path),
                    "-o", f"UserKnownHostsFile={known_hosts}", f"{local.username}@{local.host}",
                    "rm -rf floor deploy-runs/apps/bench-*"], check=False)


if __name__ == "__main__":
    main()
