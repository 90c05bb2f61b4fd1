"""What every benchmark needs: the sandbox, a fresh Prefect server + worker of its own, and
sample apps published as real git repositories. Stops what it started."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy_runs.prefect_local import FLOW_SETTINGS  # noqa: E402 - light; imports no Prefect

# Flows the benchmarks run in their own process get the project's Prefect settings, which
# Prefect reads when it is first imported.
os.environ.update(FLOW_SETTINGS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Bench:
    tmp: Path
    info: object
    made: list[str] = field(default_factory=list)
    state: Path | None = None  # PID files and logs of the bench's Prefect server and worker
    port: int = 0  # its server's port
    ports: dict[str, dict[str, int]] = field(default_factory=dict)  # app -> service -> port
    proxy: bool = True  # apps serve their HTTP services through the server's proxy

    def app(self, kind: str, files: dict[str, str] | None = None, example: str = "hello",
            interval: float = 0.05, **spec_changes: object) -> tuple[str, int]:
        """A fresh app from an example (files changed or added); returns (name, first port)."""
        from deploy_runs.gitrepo import publish
        from deploy_runs.spec import load_server, parse_spec, register, to_application

        name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
        source = self.tmp / name
        shutil.copytree(ROOT / "examples" / example, source)
        (source / "nonce.txt").write_text(uuid.uuid4().hex)
        for path, content in (files or {}).items():
            (source / path).write_text(content)
        publish(source, self.info.git_dir / f"{name}.git", "bench")
        import yaml

        spec = yaml.safe_load((source / "app.yaml").read_text())
        local = self.info.host("local")
        spec.update(name=name, repository=f"{local.git_base_url}{name}.git", server="sandbox-local",
                    proxy=self.proxy, **spec_changes)
        for service in spec["services"]:
            service["host_port"] = free_port()
            service.setdefault("health_check", {})["interval"] = interval
        register(to_application(parse_spec(spec), load_server("sandbox-local")))
        self.made.append(name)
        self.ports[name] = {s["name"]: s["host_port"] for s in spec["services"]}
        return name, spec["services"][0]["host_port"]


@contextmanager
def bench_environment() -> Iterator[Bench]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deploy_runs import sandbox
    from deploy_runs.prefect_local import start_server, start_worker, stop
    from deploy_runs.sandbox_blocks import save_server_blocks

    sandbox.install()
    info = sandbox.up()
    tmp = Path(tempfile.mkdtemp(prefix="deploy-runs-bench-"))
    state = tmp / "prefect"
    state.mkdir()
    bench = Bench(tmp, info, state=state, port=free_port())
    try:
        url = start_server(bench.port, state=state)
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            save_server_blocks(info)
            start_worker(url, state=state)
            yield bench
    finally:
        stop(state)
        cleanup(bench)
        shutil.rmtree(tmp, ignore_errors=True)


def cleanup(bench: Bench) -> None:
    import subprocess

    import docker

    local = bench.info.host("local")
    client = docker.DockerClient(base_url=local.docker_host)
    for container in client.containers.list(all=True):
        if any(container.name.startswith(f"{n}-") for n in bench.made):
            container.remove(force=True)
    client.close()
    for name in bench.made:
        shutil.rmtree(bench.info.git_dir / f"{name}.git", ignore_errors=True)
    known = bench.tmp / "known_hosts"
    known.write_text(local.known_hosts_line() + "\n")
    subprocess.run(["ssh", "-q", "-p", str(local.port), "-i", str(local.private_key_path),
                    "-o", f"UserKnownHostsFile={known}", f"{local.username}@{local.host}",
                    "rm -rf floor deploy-runs/apps/bench-*"], check=False)


def summary(label: str, values: list[float], unit: str = "s") -> str:
    import statistics

    return (f"{label:<48} median {statistics.median(values):7.3f}{unit}   "
            f"max {max(values):7.3f}{unit}   n={len(values)}")
