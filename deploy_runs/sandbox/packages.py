"""The Debian packages and programs the sandbox needs."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .layout import Layout, mkdir
from .processes import SandboxError, daemon_env, run

log = logging.getLogger("deploy_runs.sandbox")

# chromium and fonts (text, and the emoji of run summaries): tests/integration/test_ui.py
# opens the Prefect UI in headless Chromium; postgresql and redis-server: the several-workers
# layout (Prefect's server on PostgreSQL with its concurrency leases in Redis,
# deploy_runs.prefect_local.start_postgres and start_redis)
PACKAGES = ("docker.io", "busybox-static", "openssh-server", "iproute2", "curl", "git",
            "chromium", "fonts-dejavu-core", "fonts-noto-color-emoji", "postgresql",
            "redis-server")
PROGRAMS = ("ssh-keygen", "ip", "nsenter", "setsid", "git", "dockerd", "docker", "useradd", "sshd")


def missing_packages() -> list[str]:
    proc = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *PACKAGES], check=False)
    installed = set()
    for line in proc.stdout.splitlines():
        pkg, _, status = line.partition(" ")
        if status.startswith("ii"):
            installed.add(pkg.split(":")[0])
    return [p for p in PACKAGES if p not in installed]


def install() -> None:
    """apt-get install the missing Debian packages; does nothing (no apt-get at all) when all
    are there."""
    missing = missing_packages()
    if not missing:
        return
    log.info("installing %s", " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env, timeout=900)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1800)


def check_programs() -> None:
    path = daemon_env()["PATH"]
    missing = [p for p in PROGRAMS if shutil.which(p, path=path) is None]
    if not Path("/usr/lib/openssh/sftp-server").exists():
        missing.append("/usr/lib/openssh/sftp-server")
    if missing:
        raise SandboxError(f"missing programs: {', '.join(missing)} (run install())")


# --- nginx, for the sandbox's reverse-proxy image (engine.ensure_proxy_image) ---------------

# Debian's nginx binary is in the package "nginx" (nginx-common has its configuration and the
# service).  Installing the package would start a system nginx on port 80, so the binary is
# taken from the .deb instead, unless nginx is installed anyway.
NGINX_BINARY = Path("/usr/sbin/nginx")
APT_ARCHIVES = Path("/var/cache/apt/archives")
_NGINX_IN_DEB = Path("usr/sbin/nginx")
_nginx_lock = threading.Lock()  # the engines' images are built in a thread pool


def nginx_cache_dir(lay: Layout) -> Path:
    """``<sandbox dir>/nginx``: a downloaded nginx .deb and ``root/``, its extracted files."""
    return lay.dir / "nginx"


def nginx_binary() -> Path:
    """Debian's nginx binary without installing the package: ``/usr/sbin/nginx`` if there is
    one, else the binary of the nginx .deb extracted (once) into ``nginx_cache_dir``; the .deb
    from apt's cache of downloaded packages, else ``apt-get download nginx``."""
    if NGINX_BINARY.is_file():
        return NGINX_BINARY
    cache = nginx_cache_dir(Layout.current())
    root = cache / "root"
    binary = root / _NGINX_IN_DEB
    with _nginx_lock:
        if binary.is_file():
            return binary
        mkdir(cache)
        deb = _nginx_deb(cache)
        log.info("extracting nginx from %s", deb)
        tmp = Path(tempfile.mkdtemp(prefix=".root-", dir=cache))
        try:
            run(["dpkg-deb", "-x", str(deb), str(tmp)], timeout=300)
            if not (tmp / _NGINX_IN_DEB).is_file():
                raise SandboxError(f"{deb} has no /{_NGINX_IN_DEB}")
            if root.exists():
                shutil.rmtree(root)  # an extraction without the binary (cannot happen: renamed)
            try:
                os.rename(tmp, root)  # readers never see half an extraction
            except OSError:
                if not binary.is_file():  # else another process extracted it meanwhile
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return binary


def _nginx_deb(cache: Path) -> Path:
    """The newest nginx .deb of the machine's architecture in apt's cache or in ``cache``,
    downloaded into ``cache`` if there is none."""
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    pattern = f"nginx_*_{arch}.deb"
    debs = [*APT_ARCHIVES.glob(pattern), *cache.glob(pattern)]
    if not debs:
        log.info("downloading the nginx package")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        download = ["apt-get", "download", "nginx"]
        if run(download, env=env, cwd=cache, timeout=900, check=False).returncode != 0:
            run(["apt-get", "update"], env=env, timeout=900)  # no package lists yet
            run(download, env=env, cwd=cache, timeout=900)
        debs = list(cache.glob(pattern))
        if not debs:
            raise SandboxError(f"apt-get download nginx left no {pattern} in {cache}")
    return max(debs, key=functools.cmp_to_key(_compare_deb_versions))


def _compare_deb_versions(a: Path, b: Path) -> int:
    va, vb = (run(["dpkg-deb", "-f", str(d), "Version"]).stdout.strip() for d in (a, b))
    if va == vb:
        return 0
    newer = run(["dpkg", "--compare-versions", va, "gt", vb], check=False).returncode == 0
    return 1 if newer else -1
