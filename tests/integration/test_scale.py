"""Beyond one machine, in CI's budget: a Prefect server on PostgreSQL with its concurrency
leases in Redis, two process workers and three network-namespace hosts; 20 deploys of 10 apps
submitted at once. Every run ends Completed, no two runs of one app overlap, every app serves
its new version, and every line the servers printed is in the runs' logs. (`bench/scale.py`
does the same with bigger numbers and times it.) PostgreSQL and Redis restarted during a run
are the layout's engine faults (test_engine_faults.py has the others)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deploy_runs import AsyncDeployRuns, DeployRuns, RunStatus, sandbox
from deploy_runs.prefect_local import (
    drop_postgres,
    start_postgres,
    start_redis,
    start_server,
    start_worker,
    stop,
)
from deploy_runs.sandbox_blocks import block_name, server_block

from .conftest import free_port, http_get, wait_for
from .test_engine_faults import (
    FREED,
    OUTAGE_SECONDS,
    TWO_OUTAGE_TICKS,
    building,
    ticking_build,
    ticks_logged,
)

pytestmark = pytest.mark.timeout(900)

HOSTS = ("s1", "s2", "s3")
WORKERS = ("worker-a", "worker-b")


@dataclass
class Cluster:
    url: str
    state: Path  # PID files and logs of PostgreSQL, Redis, the server and the workers
    postgres_port: int
    redis_port: int


APPS = 10
LINES = 300
PRINTED = re.compile(r"^printed-(\d+)$")


def dockerfile(lines: int) -> str:
    """The hello image, whose build prints `lines` numbered lines after the changed layer."""
    return ("FROM busybox:latest\n"
            "COPY site/ /www/\n"
            f"RUN seq 1 {lines} | sed 's/^/printed-/'\n"
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')


@pytest.fixture(scope="module")
def cluster(prefect_api, tmp_path_factory) -> Iterator[Cluster]:
    """Its own Prefect server on PostgreSQL, leases in Redis, with two workers; server blocks
    for 3 hosts."""
    state: Path = tmp_path_factory.mktemp("cluster")
    postgres_port, redis_port = free_port(), free_port()
    try:
        url = start_server(free_port(), state,
                           database_url=start_postgres(state, postgres_port),
                           redis_url=start_redis(state, redis_port))
        with temporary_settings(updates={PREFECT_API_URL: url}):
            for name in WORKERS:
                start_worker(url, state, name=name)
            for name in HOSTS:
                host = sandbox.add_host(name)
                server_block(host).save(block_name(host), overwrite=True)
            yield Cluster(url, state, postgres_port, redis_port)
    finally:
        stop(state)
        drop_postgres(state)


def printed(lines) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := PRINTED.match(line.text))]


def test_twenty_deploys_of_ten_apps_on_three_hosts_two_workers_postgresql(cluster, make_app):
    apps = []
    for i in range(APPS):
        # content of its own: no build of one app is served from another's layer cache
        app = make_app("hello", files={"Dockerfile": dockerfile(LINES),
                                       "site/index.html": f"old version {uuid.uuid4()}\n"},
                       server=f"sandbox-{HOSTS[i % len(HOSTS)]}")
        new = app.push({"site/index.html": f"new version of {app.name}\n"}, "new version")
        apps.append((app, app.commits[0], new))
    runs = AsyncDeployRuns()

    async def submit_all():
        async def per_app(app, old, new):  # the older commit is requested first
            return [await runs.deploy(app.name, ref=old), await runs.deploy(app.name, ref=new)]
        submitted = await asyncio.gather(*(per_app(*a) for a in apps))
        return [[await runs.wait(r.id, timeout=600) for r in pair] for pair in submitted]

    results = asyncio.run(submit_all())

    for (app, old, new), (first, second) in zip(apps, results, strict=True):
        assert first.status is RunStatus.COMPLETED, (app.name, first.error)
        assert second.status is RunStatus.COMPLETED, (app.name, second.error)
        assert (first.commit, second.commit) == (old, new)
        first_end = max(s.ended_at for s in first.steps if s.ended_at)
        second_start = min(s.started_at for s in second.steps if s.started_at)
        assert second_start >= first_end, f"runs of {app.name} overlapped"
        assert http_get(app.url()) == (200, f"new version of {app.name}\n")

    async def all_logs(run_id):
        return [line async for line in runs.logs(run_id)]

    for pair in results:
        for run in pair:
            lines = asyncio.run(all_logs(run.id))
            assert printed(lines) == list(range(1, LINES + 1)), (
                run.id, len(lines), [(ln.step, ln.text) for ln in lines
                                     if ln.step == "Build images"][:12])

    # each run was taken by exactly one of the two workers, and both took some
    taken = {name: (cluster.state / f"{name}.log").read_text() for name in WORKERS}
    counts = dict.fromkeys(WORKERS, 0)
    for pair in results:
        for run in pair:
            # both workers may try a run; the server lets one take it and aborts the other
            by = [name for name, log in taken.items()
                  if f"submitting flow run '{run.id}'" in log
                  and f"Aborted submission of flow run '{run.id}'" not in log]
            assert len(by) == 1, (run.id, by)
            counts[by[0]] += 1
    print(f"runs per worker: {counts}")
    assert all(counts.values()), counts


def test_the_database_then_redis_restarted_during_a_run(cluster, make_app):
    """PostgreSQL (fast shutdown), then Redis, each stopped for a few seconds during one
    build and started again: the run completes with every line once, the app's slot is given
    back (its lease was kept in Redis), and the next deploy takes it at once."""
    client = DeployRuns()
    app = make_app("hello", files=ticking_build(TWO_OUTAGE_TICKS, uuid.uuid4().hex),
                   server=f"sandbox-{HOSTS[0]}")
    run = client.deploy(app.name)
    wait_for(lambda: building(client, run.id), 120, "the build to be printing")
    for part in ("postgres", "redis"):
        # PostgreSQL's fast shutdown (SIGINT) ends its sessions, as a restart of the service
        # does
        logged = len(ticks_logged(client, run.id))
        assert stop(cluster.state, only=(part,), sig=signal.SIGINT) == [part]
        time.sleep(OUTAGE_SECONDS)  # the outage itself
        if part == "postgres":
            start_postgres(cluster.state, int(cluster.postgres_port))
            # the run logs again before Redis goes
            wait_for(lambda n=logged: len(ticks_logged(client, run.id)) >= n + 8, 60,
                     "the build to log again after PostgreSQL came back")
        else:
            start_redis(cluster.state, int(cluster.redis_port))
    back = time.monotonic()
    done = client.wait(run.id, timeout=300)
    assert done.status is RunStatus.COMPLETED, (done.message, done.error)
    build = done.step("Build images")
    assert build.ended_at is not None and \
        build.ended_at.timestamp() > time.time() - (time.monotonic() - back), \
        "the build ended before the outages ended: make TWO_OUTAGE_TICKS larger"
    assert ticks_logged(client, run.id) == list(range(1, TWO_OUTAGE_TICKS + 1))

    app.push({"Dockerfile": ticking_build(1, uuid.uuid4().hex)["Dockerfile"]}, "quick build")
    again = client.wait(client.deploy(app.name).id, timeout=240)
    assert again.status is RunStatus.COMPLETED, again.error
    texts = [line.text for line in client.logs(again.id)]
    assert not [t for t in texts if "Waiting for" in t or FREED in t], texts[:20]
