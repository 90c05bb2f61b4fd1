"""The app's side of the server's reverse proxy (deploy_runs/proxy.py), used by two steps.

Start application starts a proxied service's new container beside the old one, on a loopback
port (`NAME-next`), and takes no traffic from it. Health check probes it there; when every
service is healthy it switches the proxy to the new containers in one reload, waits for the
old configuration's requests to finish (`drain`), then stops and removes the old containers
and gives the new ones their names. Which container is new is read from the server (a
`NAME-next` container), not carried between the steps: a run resumed in another process, or
retried from its Health check, finds it the same way.
"""

from __future__ import annotations

import threading
import time

from blocks import Service
from deploy_runs import commands as c
from deploy_runs import proxy
from deploy_runs.errors import CommandFailed, StepFailed
from deploy_runs.remote import CollectingSink
from deploy_runs.steplog import StepLog
from deploy_runs.steps.context import DeployContext


def proxied(ctx: DeployContext, service: Service) -> bool:
    """Whether the service's public port is served through the proxy (the HTTP services of
    an app with `proxy` on: the proxy speaks HTTP)."""
    return ctx.app.proxy and service.health_check.type == "http"


def next_name(container: str) -> str:
    """Where a proxied service's new container runs until the switch."""
    return f"{container}-next"


class ProxyRoutes:
    """What the proxy serves for one app on one server: public port -> loopback port."""

    def __init__(self, ctx: DeployContext, log: StepLog) -> None:
        self.ctx, self.log, self.host = ctx, log, ctx.host()
        self._applied: dict[int, int] | None = None
        self._lock = threading.Lock()  # services started side by side may release ports

    def applied(self) -> dict[int, int]:
        """The routes of the app's file on the server (none when it has no file)."""
        if self._applied is None:
            read = CollectingSink()
            self.host.run(proxy.read_conf(self.ctx.app.name), read, quiet=True)
            self._applied = proxy.parse_app_conf(read.stdout())
        return self._applied

    def release(self, port: int) -> dict[int, int] | None:
        """Before a container publishes `port` itself: the proxy stops listening on it, if it
        does for this app (the service was proxied before); the route it had, if any."""
        with self._lock:
            routes = self.applied()
            if port not in routes:
                return None
            self.log.info("the proxy stops serving port %d: the service publishes it itself "
                          "now", port)
            self.apply({p: loop for p, loop in routes.items() if p != port})
            return {port: routes[port]}

    def apply(self, routes: dict[int, int]) -> set[int]:
        """Make the proxy serve `routes` for this app; the process ids of its workers that
        had the old configuration (to `drain`)."""
        app = self.ctx.app.name
        new_file = proxy.new_conf_file(app, str(self.ctx.run_id))
        self.host.run(c.make_dirs(proxy.CONF_DIR), self.log)
        self.host.write_file(new_file, proxy.app_conf(app, routes).encode(), mode=0o644)
        # the script is long: the log names it instead of showing it
        self.log.info("$ sh -c <deploy_runs.proxy.apply_script: %s becomes app-%s.conf of "
                      "this server's proxy>", new_file, app)
        sink = CollectingSink(self.log)
        try:
            self.host.run(proxy.apply_script(app, self.ctx.server.proxy_image, sorted(routes),
                                             new_file), sink, quiet=True)
        except CommandFailed as exc:
            said = [line for line in exc.output_tail if line.strip()]
            raise StepFailed("the proxy could not be switched: "
                             + (said[-1].strip() if said else f"exit code {exc.exit_code}"),
                             evidence=said) from None
        self._applied = dict(routes)
        self.log.info("proxy: %s", ", ".join(f"port {public} -> 127.0.0.1:{loop}"
                                             for public, loop in sorted(routes.items()))
                      or "no port of this application")
        return proxy.old_workers(sink.stdout())

    def drain(self, old_workers: set[int]) -> None:
        """Wait until the proxy's workers that had the old configuration have finished their
        requests (each exits then), at most the app's drain_seconds."""
        if not old_workers:
            return
        started = time.monotonic()
        deadline = started + self.ctx.app.drain_seconds
        while True:
            sink = CollectingSink()
            self.host.run(proxy.proxy_processes(), sink, check=False, quiet=True)
            left = old_workers & proxy.process_ids(sink.stdout())
            if not left:
                self.log.info("the requests under the old configuration finished within %.2fs",
                              time.monotonic() - started)
                return
            if time.monotonic() >= deadline:
                self.log.info("%d proxy worker(s) still had requests in flight after %gs "
                              "(drain_seconds); the old containers stop now",
                              len(left), self.ctx.app.drain_seconds)
                return
            # Stopped here, the proxy serves the new containers and the old ones still run
            # under their names: the next deploy's Start application finishes the switch.
            self.ctx.check_stopped()
            time.sleep(0.1)
