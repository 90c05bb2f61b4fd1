"""The Debian packages and programs the sandbox needs."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

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
