"""Docker engines: the main one (reused if it already runs) and one per namespace host, each
with a locally built ``busybox:latest`` and reverse-proxy image (``PROXY_IMAGE``, nginx)
because no registry can be reached."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from .hosts import MAIN_DOCKER_HOST, HostSpec
from .layout import Layout, mkdir
from .packages import nginx_binary
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


# --- the reverse-proxy image ----------------------------------------------------------------

PROXY_IMAGE = "deploy-runs-nginx:sandbox"

# Like the official nginx image: nginx in the foreground as PID 1, a graceful stop on SIGQUIT,
# the server blocks in /etc/nginx/conf.d/*.conf.  FROM scratch, so there is no shell: COPY only.
_PROXY_DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.deploy-runs.sandbox-proxy="1"
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
"""

_PROXY_NGINX_CONF = """\
user nobody nogroup;
worker_processes 2;
pid /run/nginx.pid;
error_log /dev/stderr notice;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
"""

_PROXY_MIME_TYPES = """\
types {
    text/html html htm;
    text/css css;
    text/plain txt;
    text/xml xml;
    application/javascript js mjs;
    application/json json;
    application/pdf pdf;
    application/wasm wasm;
    application/zip zip;
    application/gzip gz;
    image/gif gif;
    image/jpeg jpeg jpg;
    image/png png;
    image/svg+xml svg svgz;
    image/webp webp;
    image/x-icon ico;
    font/woff woff;
    font/woff2 woff2;
}
"""

_PROXY_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/nginx/nginx.conf": _PROXY_NGINX_CONF,
    "etc/nginx/mime.types": _PROXY_MIME_TYPES,
}

# The paths Debian's binary was configured with (nginx -V): the prefix, the modules, the
# parent of the temp paths (nginx makes body/, proxy/... itself, owned by the worker user), the
# access log's directory, the lock file's; the pid file's is set in nginx.conf.
_PROXY_DIRS = ("etc/nginx/conf.d", "usr/share/nginx/html", "usr/lib/nginx/modules",
               "var/lib/nginx", "var/log/nginx", "var/lock", "run", "tmp", "root")


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries and the dynamic loader ``binary`` loads (``ldd``)."""
    proc = run(["ldd", str(binary)], env=daemon_env())
    libs: list[Path] = []
    for line in proc.stdout.splitlines():
        name, arrow, target = line.strip().partition("=>")
        path = (target if arrow else name).split("(")[0].strip()
        if "not found" in path:
            raise SandboxError(f"{binary} needs {name.strip()}, which is not found")
        if path.startswith("/"):
            libs.append(Path(path))
    if not libs:
        raise SandboxError(f"ldd found no shared library of {binary}: {proc.stdout.strip()}")
    return libs


def proxy_context(ctx: Path, binary: Path) -> None:
    """The build context of ``PROXY_IMAGE`` in ``ctx``: Dockerfile and rootfs/ (nginx, the
    libraries at the paths ldd gives, /etc files and the directories nginx needs)."""
    root = ctx / "rootfs"
    for d in ("", *_PROXY_DIRS):
        mkdir(root / d)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    for rel, text in _PROXY_FILES.items():
        mkdir((root / rel).parent)
        (root / rel).write_text(text)
        os.chmod(root / rel, 0o644)
    for src, rel in [(binary, "usr/sbin/nginx"),
                     *((lib, str(lib.relative_to("/"))) for lib in shared_libraries(binary))]:
        mkdir((root / rel).parent)
        shutil.copyfile(src, root / rel)  # the file itself where ldd found a symlink
        os.chmod(root / rel, 0o755)
    (ctx / "Dockerfile").write_text(_PROXY_DOCKERFILE)


def ensure_proxy_image(docker_host: str) -> bool:
    """Build ``PROXY_IMAGE`` in the engine unless it has it.  True if it was built."""
    if has_image(docker_host, PROXY_IMAGE):
        return False
    binary = nginx_binary()
    log.info("building %s in %s", PROXY_IMAGE, docker_host)
    with tempfile.TemporaryDirectory(prefix="deploy-runs-proxy-") as ctx:
        proxy_context(Path(ctx), binary)
        env = daemon_env({"DOCKER_HOST": docker_host, "DOCKER_BUILDKIT": "0"})
        run(["docker", "build", "-q", "-t", PROXY_IMAGE, ctx], env=env, timeout=300)
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
