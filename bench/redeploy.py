"""Benchmark: redeploys against a first deploy, on `shop` (three services), medians over repeats.

- first deploy (fresh app: provisioning, clone, three image builds, three containers). Each
  fresh app's services get content of their own, so no layer of the app is already in the
  engine's cache from an earlier app (a real first deploy has none); only the base image is
  there (nothing can be pulled here). `--shared-content` deploys the example as it is, whose
  layers earlier bench apps left in the cache (a warmer first deploy).
- redeploy with no change (nothing built, nothing restarted)
- redeploy with one service changed (one image rebuilt from cache, one container replaced)
- rollback to the previous release (its images kept: nothing fetched or built, the changed
  service's container replaced)
- the same for a service with a slow dependency layer (`RUN sleep 3`) before its source layer:
  the cache keeps the slow layer, so only the source layer is rebuilt.
- switches under traffic (not timed): a client asks each HTTP port of the app every 10 ms, a
  new connection each time, during a redeploy that replaces every service, a rollback, and a
  redeploy whose new version never becomes healthy; it prints the requests, the failed ones,
  and (for the failing version) the answers that did not come from the old version.

It also prints the one-service release's own work (its time beyond a no-change run) against the
first deploy's own work: the lowest ratio the one-service redeploy could reach if everything
every run pays (Prefect's run, SSH, fetch, checks) took no time at all.

Runs go through the engine in-process (the flow run), so worker start-up does not blur them.

    python bench/redeploy.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from harness import bench_environment, summary

from deploy_runs.sandbox.traffic import Client

VERBOSE = False
# listens on another port than the spec's: never healthy
BROKEN_API = ('FROM busybox:latest\nCOPY content/ /www/\n'
              'CMD ["httpd", "-f", "-p", "9999", "-h", "/www"]\n')
SLOW_WEB = ("FROM busybox:latest\nRUN sleep 3 && echo {nonce} > /deps.txt\n"
            'COPY content/ /www/\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')


def timed(app: str, **options: object) -> float:
    from flows.deploy import run_in_process

    start = time.perf_counter()
    state = run_in_process(app, **options)
    took = time.perf_counter() - start
    assert state.is_completed(), state
    if VERBOSE:
        from deploy_runs import DeployRuns

        run = DeployRuns().get_run(state.state_details.flow_run_id)
        print(f"{app}: {took:.2f}s, flow run {run.duration}s:",
              ", ".join(f"{s.name} {s.status} {s.duration}s" for s in run.steps))
    return took


SHOP_SERVICES = ("web", "api", "admin")


def fresh_app(bench, kind: str, shared: bool, files: dict[str, str] | None = None) -> str:
    """A new app from the `shop` example; unless `shared`, each service's context gets a file
    of its own, so its layers are built for the first time."""
    own = {} if shared else {f"{s}/content/first.txt": uuid.uuid4().hex for s in SHOP_SERVICES}
    return bench.app(kind, example="shop", files={**own, **(files or {})})[0]


def push(bench, app: str, path: str, content: str) -> None:
    from deploy_runs.gitrepo import publish

    source = bench.tmp / app
    (source / path).write_text(content)
    publish(source, bench.info.git_dir / f"{app}.git", f"change {path}")


def under_traffic(bench, app: str, counts: dict[str, list[int]], key: str,
                  old: dict[str, str] | None = None, **options: object) -> None:
    """One run while a client asks each of the app's HTTP ports every 10 ms; adds (requests,
    failed, answers not from `old`) to counts[key]."""
    from flows.deploy import run_in_process

    clients = {s: Client("127.0.0.1", port) for s, port in bench.ports[app].items()
               if s in ("web", "api")}
    time.sleep(0.2)
    state = run_in_process(app, **options)
    time.sleep(0.2)
    answers = [a for cl in clients.values() for a in cl.stop()]
    if old is None:
        assert state.is_completed(), state
    failed = [a for a in answers if a.body is None]
    stray = [a for a in answers if old is not None and a.body not in old.values()]
    counts[key] = [n + m for n, m in zip(counts.get(key, [0, 0, 0]),
                                         (len(answers), len(failed), len(stray)), strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared-content", action="store_true",
                        help="fresh apps share the example's content (layers already cached)")
    parser.add_argument("--verbose", action="store_true", help="print each run's steps")
    parser.add_argument("--no-proxy", action="store_true",
                        help="apps publish their ports themselves (proxy: false): the cost of "
                             "the zero-downtime switch is the difference")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    rows: dict[str, list[float]] = {k: [] for k in (
        "first", "nochange", "one", "rollback", "slow-first", "slow-one")}
    traffic: dict[str, list[int]] = {}
    with bench_environment() as bench:
        bench.proxy = not args.no_proxy
        timed(bench.app("warmup")[0])
        for repeat in range(args.repeats):
            app = fresh_app(bench, "shop", args.shared_content)
            rows["first"].append(timed(app))
            rows["nochange"].append(timed(app))
            push(bench, app, "api/content/index.html", f'{{"v": "{uuid.uuid4().hex}"}}\n')
            rows["one"].append(timed(app))
            # back to the first release: its images are kept, nothing is built
            rows["rollback"].append(timed(app, rollback_to="previous"))

            # the same app's switches under traffic (after the timed runs: the clients' load
            # would blur the times)
            body = {s: f"{s} {uuid.uuid4().hex}\n" for s in ("web", "api")}
            for service, text in body.items():
                push(bench, app, f"{service}/content/index.html", text)
            push(bench, app, "admin/content/index.html", uuid.uuid4().hex)
            under_traffic(bench, app, traffic, "redeploy replacing every service")
            under_traffic(bench, app, traffic, "rollback", rollback_to="previous")
            under_traffic(bench, app, traffic, "redeploy replacing every service")
            if repeat == 0:  # waits for the health check's whole timeout (30 s)
                push(bench, app, "api/Dockerfile", BROKEN_API)
                under_traffic(bench, app, traffic, "new version never healthy (api)", old=body)

            app = fresh_app(bench, "slow", args.shared_content,
                            {"web/Dockerfile": SLOW_WEB.format(nonce=uuid.uuid4().hex)})
            rows["slow-first"].append(timed(app))
            push(bench, app, "web/content/index.html", f"<h1>{uuid.uuid4().hex}</h1>\n")
            rows["slow-one"].append(timed(app))

    first, slow_first = (statistics.median(rows[k]) for k in ("first", "slow-first"))
    content = "shared (cached layers)" if args.shared_content else "its own (cold layers)"
    print(f"\nshop, {args.repeats} repeats, engine in-process, each first deploy's content: "
          f"{content}; HTTP services "
          + ("published by their containers (proxy: false)" if args.no_proxy else
             "behind the server's proxy (zero-downtime switch)") + ":")
    print(summary("first deploy", rows["first"]))
    for key, label in (("nochange", "redeploy, no change"), ("one", "redeploy, api changed")):
        print(summary(label, rows[key]) +
              f"   = {statistics.median(rows[key]) / first:.0%} of first")
    # What no cut of the cost every run pays (Prefect's run, SSH, the fetch, the checks - the
    # no-change run) can change: the one-service release's own work against the first
    # deploy's own work. Its ratio is the lowest the "api changed" ratio can get.
    base = statistics.median(rows["nochange"])
    own_one = statistics.median(rows["one"]) - base
    own_first = first - base
    print(f"{'  beyond a no-change run: api changed':<48} {own_one:7.3f}s of the first deploy's "
          f"{own_first:.3f}s = {own_one / own_first:.0%} (the ratio with no per-run cost at all)")
    print(summary("rollback to the previous release", rows["rollback"]) +
          f"   = {statistics.median(rows['rollback']) / first:.2f} of first (goal: under 0.3)")
    print(summary("first deploy, web has a 3 s dependency layer", rows["slow-first"]))
    print(summary("redeploy, web source changed (cache keeps deps)", rows["slow-one"]) +
          f"   = {statistics.median(rows['slow-one']) / slow_first:.0%} of first")
    print("goals: no change <= 25% of first; one service <= 40%")
    print("\nswitches under traffic (each HTTP port asked every 10 ms, a new connection each):")
    for key, (requests, failed, stray) in traffic.items():
        print(f"  {key:<44} {requests:6d} requests, {failed} failed"
              + (f", {stray} not from the old version" if "never" in key else ""))
    print("goals: 0 failed; a version that is never healthy serves nothing")


if __name__ == "__main__":
    main()
