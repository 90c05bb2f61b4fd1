"""Docker engines: the main one (reused if it already runs) and one per namespace host, each
with a locally built ``busybox:latest`` because no registry can be reached."""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import tempfile
from pathlib import Path

from .hosts import MAIN_DOCKER_HOST, HostSpec
from .layout import Layout, mkdir
from .processes import (
    Pending,
    SandboxError,
    StopTarget,
    daemon_env,
    run,
    running_pid,
    spawn,
    write_atomic,
)

log = logging.getLogger("deploy_runs.sandbox")

DOCKERD_TIMEOUT = 60.0
# Engines we start stop their containers within 2 s when stopped (busybox ignores SIGTERM).
SHUTDOWN_TIMEOUT = "2"
BASE_IMAGE = "busybox:latest"
BUSYBOX_BINARY = Path("/bin/busybox")

# No registry is reachable, so "busybox:latest" is made from the static busybox binary.
# It looks enough like the real image (shell + applets in /bin, /tmp, /etc/passwd, CMD sh) for
# app Dockerfiles that say "FROM busybox:latest".
_BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin \
&& mkdir -p /tmp /root /home /etc /var/www /usr/bin /usr/sbin \
&& chmod 1777 /tmp \
&& echo root:x:0:0:root:/root:/bin/sh > /etc/passwd \
&& echo nobody:x:65534:65534:nobody:/home:/bin/false >> /etc/passwd \
&& echo root:x:0: > /etc/group \
&& echo nobody:x:65534: >> /etc/group"]
LABEL org.deploy-runs.sandbox-base="1"
CMD ["sh"]
"""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def socket_path(docker_host: str) -> str:
    if not docker_host.startswith("unix://"):
        raise ValueError(f"not a unix socket docker host: {docker_host}")
    return docker_host[len("unix://") :]


def api_get(docker_host: str, url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of GET ``url`` on the engine, or None if it does not answer."""
    conn = _UnixHTTPConnection(socket_path(docker_host), timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def engine_answers(docker_host: str, timeout: float = 2.0) -> bool:
    return api_get(docker_host, "/_ping", timeout) == 200


def has_image(docker_host: str, ref: str) -> bool:
    status = api_get(docker_host, f"/images/{ref}/json", timeout=10.0)
    if status is None:
        raise SandboxError(f"docker engine at {docker_host} does not answer")
    return status == 200


def ensure_base_image(docker_host: str) -> bool:
    """Build ``busybox:latest`` in the engine unless it has it.  True if it was built."""
    if has_image(docker_host, BASE_IMAGE):
        return False
    if not BUSYBOX_BINARY.is_file():
        raise SandboxError(f"{BUSYBOX_BINARY} is missing (install busybox-static)")
    log.info("building %s in %s", BASE_IMAGE, docker_host)
    with tempfile.TemporaryDirectory(prefix="deploy-runs-base-") as ctx:
        shutil.copy2(BUSYBOX_BINARY, Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(_BASE_DOCKERFILE)
        # The classic builder uses a local base image without asking a registry.
        env = daemon_env({"DOCKER_HOST": docker_host, "DOCKER_BUILDKIT": "0"})
        run(["docker", "build", "-q", "-t", BASE_IMAGE, ctx], env=env, timeout=300)
    return True


# --- starting and stopping engines ----------------------------------------------------------


def main_engine_target(lay: Layout) -> StopTarget:
    return StopTarget("dockerd", lay.dockerd_dir / "dockerd.pid",
                      str(lay.dockerd_dir / "dockerd.daemon.pid"), 30.0)


def start_main_engine(lay: Layout) -> list[Pending]:
    """Start dockerd on /var/run/docker.sock unless an engine answers there (ours or not)."""
    target = main_engine_target(lay)
    pid = running_pid(target.pidfile, target.marker)
    if engine_answers(MAIN_DOCKER_HOST, timeout=1.0):
        return []
    if pid is None:
        mkdir(lay.dockerd_dir)
        pid = spawn(["dockerd", "--host", MAIN_DOCKER_HOST, "--pidfile", target.marker,
                     "--shutdown-timeout", SHUTDOWN_TIMEOUT],
                    logfile=lay.dockerd_dir / "dockerd.log", pidfile=target.pidfile, env=daemon_env())
    return [Pending("dockerd", lambda: engine_answers(MAIN_DOCKER_HOST), pid,
                    lay.dockerd_dir / "dockerd.log", DOCKERD_TIMEOUT)]


def ns_engine_target(spec: HostSpec) -> StopTarget:
    return StopTarget(f"{spec.label}dockerd", spec.dir / "dockerd.pid",
                      str(spec.dir / "dockerd.daemon.pid"), 30.0)


def ns_engine_running(spec: HostSpec) -> bool:
    t = ns_engine_target(spec)
    return running_pid(t.pidfile, t.marker) is not None and engine_answers(spec.docker_host, 1.0)


def start_ns_engine(spec: HostSpec) -> list[Pending]:
    """Start the namespace host's own dockerd unless it runs."""
    assert spec.ns is not None
    ns, target, logfile = spec.ns, ns_engine_target(spec), spec.dir / "dockerd.log"
    pid = running_pid(target.pidfile, target.marker)
    if pid is not None and engine_answers(ns.docker_host, timeout=1.0):
        return []
    if pid is None:
        mkdir(spec.dir)
        # Its own config file, so that /etc/docker/daemon.json of the main engine does not apply,
        # and its own key, so that the engine ID ("docker info") differs from the main engine's.
        config = spec.dir / "daemon.json"
        write_atomic(config, json.dumps({"deprecated-key-path": str(spec.dir / "docker-key.json")}))
        pid = spawn(
            [*spec.nsenter(), "dockerd",
             "--config-file", str(config),
             "--host", ns.docker_host,
             "--data-root", str(spec.dir / "docker"),
             "--exec-root", ns.exec_root,
             "--pidfile", target.marker,
             "--bip", ns.bip,
             "--cgroup-parent", ns.netns,
             "--shutdown-timeout", SHUTDOWN_TIMEOUT],
            logfile=logfile, pidfile=target.pidfile, env=daemon_env(),
        )
    docker_host = ns.docker_host
    return [Pending(target.name, lambda: engine_answers(docker_host), pid, logfile, DOCKERD_TIMEOUT)]
