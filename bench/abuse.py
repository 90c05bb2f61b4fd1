"""Benchmark: what hostile workloads cost the process running a deploy (the worker's flow
process), measured as peak RSS above the process's own baseline.

- output flood: a step whose command prints as fast as it can (`yes` of 100-character lines),
  at two sizes: bounded memory means the peak does not grow with the size (the step log waits
  while more than MAX_BACKLOG records are queued for the API: back-pressure to the server);
- many services: one app with 60 services (60 images, containers and health checks);
- a hanging health check: a service that accepts connections and never answers;
- a long stream through a step with the default log limit (100 MB stored, the rest counted):
  100-byte lines, and one endless line with no newline, at two sizes (time linear in the
  size: the same MB/s at both; memory bounded: the same peak), against the floor of reading
  the same stream from the SSH channel and dropping it.

The flows run in this process (the executor and step log of the deploy steps); RSS is sampled
every 50 ms from /proc/self/status.

    python bench/abuse.py [--flood-mb 20,200] [--services 60] [--stream-mb 500,2000]
"""

from __future__ import annotations

import argparse
import contextvars
import sys
import threading
import time
import uuid

from harness import ROOT, bench_environment, free_port

sys.path.insert(0, str(ROOT))

LINE = "x" * 99  # + newline = 100 bytes a line


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    def __init__(self) -> None:
        self.base = rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        from deploy_runs.prefect_compat.log_delivery import log_backlog

        self.backlog = 0
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())
            self.backlog = max(self.backlog, log_backlog())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return f"peak RSS +{self.growth:6.1f} MB ({self.peak:5.0f} MB)"

    @property
    def growth(self) -> float:
        return self.peak - self.base


def flood(megabytes: int) -> tuple[float, float, float]:
    from tests.integration.commandflow import run_log_cases

    lines = megabytes * 10_000
    script = f"yes {LINE} | head -n {lines}"
    app = f"bench-flood-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    with PeakRSS() as rss:
        state = contextvars.copy_context().run(run_log_cases, app, [script])
    took = time.perf_counter() - started
    assert state.is_completed(), state
    print(f"  (most log records waiting for the API: {rss.backlog})")
    return rss, took, megabytes / took


STREAMS = {  # what the server prints: N MB of ...
    "100-byte lines": "yes " + LINE + " | head -c {size}",
    "one endless line": "head -c {size} /dev/zero | tr '\\000' x",
}


def stream(kind: str, megabytes: int) -> tuple[PeakRSS, float]:
    """A step reading `megabytes` of `kind` with the default log limit (100 MB stored)."""
    from tests.integration.commandflow import run_log_cases

    script = STREAMS[kind].format(size=megabytes * 1_000_000)
    app = f"bench-stream-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    with PeakRSS() as rss:
        state = contextvars.copy_context().run(run_log_cases, app, [script], "sandbox-local",
                                               100)
    took = time.perf_counter() - started
    assert state.is_completed(), state
    return rss, megabytes / took


def stream_floor(kind: str, megabytes: int) -> float:
    """MB/s of reading the same stream from the SSH channel and dropping it: the floor."""
    from blocks import SSHServer
    from deploy_runs.remote import RemoteHost, ServerAddress

    block = SSHServer.load("sandbox-local")
    address = ServerAddress(block.host, block.port, block.username,
                            block.private_key.get_secret_value(), block.host_key)
    script = STREAMS[kind].format(size=megabytes * 1_000_000)
    with RemoteHost(address) as host:
        started = time.perf_counter()
        channel = host.transport.open_session()
        channel.exec_command(script)
        while channel.recv(65536):
            pass
        channel.close()
        return megabytes / (time.perf_counter() - started)


def deploy(bench, name: str, files: dict[str, str], services: int,
           health_timeout: float = 30) -> tuple[float, float, str]:
    import yaml

    from deploy_runs.gitrepo import publish
    from deploy_runs.spec import load_server, parse_spec, register, to_application
    from flows.deploy import run_in_process

    source = bench.tmp / name
    (source / "site").mkdir(parents=True)
    (source / "site" / "index.html").write_text(name)
    for path, content in files.items():
        (source / path).write_text(content)
    publish(source, bench.info.git_dir / f"{name}.git", "bench")
    local = bench.info.host("local")
    spec = {"name": name, "repository": f"{local.git_base_url}{name}.git",
            "server": "sandbox-local", "services": [
                {"name": f"s{i}", "container_port": 8080, "host_port": free_port(),
                 "health_check": {"type": "http", "timeout": health_timeout, "interval": 0.2}}
                for i in range(services)]}
    register(to_application(parse_spec(yaml.safe_load(yaml.safe_dump(spec))),
                            load_server("sandbox-local")))
    bench.made.append(name)
    started = time.perf_counter()
    with PeakRSS() as rss:
        state = run_in_process(name)
    return rss, time.perf_counter() - started, state.type.value


HTTPD = ('FROM busybox:latest\nCOPY site/ /www/\n'
         'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')
# accepts connections, reads the request, never answers
SILENT = ('FROM busybox:latest\n'
          'CMD ["sh", "-c", "while true; do sleep 3600 | nc -l -p 8080 >/dev/null; done"]\n')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood-mb", default="20,200")
    parser.add_argument("--services", type=int, default=60)
    parser.add_argument("--stream-mb", default="500,2000")
    args = parser.parse_args()
    with bench_environment() as bench:
        flood(1)  # warm-up: imports, first API client
        rows = []
        for kind in STREAMS:
            for mb in (int(x) for x in args.stream_mb.split(",")):
                floor = stream_floor(kind, mb)
                growth, rate = stream(kind, mb)
                rows.append(f"{kind:>16}, {mb:>5} MB: {growth}   {rate:6.1f} MB/s"
                            f"   (SSH read floor {floor:6.1f} MB/s; {rate / floor:4.0%} of it)")
                print(rows[-1], flush=True)
        for mb in (int(x) for x in args.flood_mb.split(",")):
            growth, took, rate = flood(mb)
            rows.append(f"output flood {mb:>4} MB ({mb * 10_000:,} lines): {growth}"
                        f"   {took:6.1f} s   {rate:5.1f} MB/s")
            print(rows[-1], flush=True)
        growth, took, end = deploy(bench, f"bench-many-{uuid.uuid4().hex[:6]}",
                                   {"Dockerfile": HTTPD}, args.services)
        rows.append(f"{args.services} services: {growth}   {took:6.1f} s   {end}")
        print(rows[-1], flush=True)
        growth, took, end = deploy(bench, f"bench-silent-{uuid.uuid4().hex[:6]}",
                                   {"Dockerfile": SILENT}, 1, health_timeout=20)
        rows.append(f"hanging health check (timeout 20 s): {growth}"
                    f"   {took:6.1f} s   {end}")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
