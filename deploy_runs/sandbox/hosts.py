"""The hosts of the sandbox and their SSH servers.

``local`` is sshd on 127.0.0.1:2222 using the main engine; ``buildkit`` is sshd on
127.0.0.1:2223 using the same engine, whose sessions build with BuildKit (as Docker 23 and later
do by default): Debian's docker CLI (20.10, which has BuildKit built in) with
``DOCKER_BUILDKIT=1``, where ``local`` builds with the legacy builder. A namespace host ``NAME``
is sshd on 10.200.N.2:22 inside netns ``dr-NAME``, whose sessions use that namespace's own
engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .access import DEPLOY_USER, ensure_keypair, public_key_line
from .layout import Layout, mkdir
from .models import SandboxHost
from .netns import NetnsHost
from .processes import (
    Pending,
    SandboxError,
    StopTarget,
    daemon_env,
    port_open,
    run,
    running_pid,
    spawn,
    stop_all,
    write_atomic,
)

log = logging.getLogger("deploy_runs.sandbox")

LOCAL_NAME = "local"
BUILDKIT_NAME = "buildkit"
LOCAL_ADDR = "127.0.0.1"
LOCAL_SSH_PORT = 2222
BUILDKIT_SSH_PORT = 2223
# The session environment of the BuildKit host: Debian's CLI (its BuildKit client is built
# in; the newer CLI a machine may have in /usr/local/bin needs the buildx plugin for it)
BUILDKIT_ENV = ("DOCKER_BUILDKIT=1", "PATH=/usr/bin:/bin:/usr/sbin:/sbin")
NETNS_SSH_PORT = 22
GIT_PORT = 9418
MAIN_DOCKER_HOST = "unix:///var/run/docker.sock"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SSHD_TIMEOUT = 15.0


@dataclass(frozen=True)
class HostSpec:
    """Everything about one host: where it listens, its files, which engine it uses."""

    lay: Layout
    name: str
    ns: NetnsHost | None  # None for the loopback hosts

    @classmethod
    def local(cls, lay: Layout) -> HostSpec:
        return cls(lay, LOCAL_NAME, None)

    @classmethod
    def buildkit(cls, lay: Layout) -> HostSpec:
        return cls(lay, BUILDKIT_NAME, None)

    @classmethod
    def namespaced(cls, lay: Layout, ns: NetnsHost) -> HostSpec:
        return cls(lay, ns.name, ns)

    @property
    def label(self) -> str:
        """Prefix of this host's component names in ``SandboxInfo.running``."""
        return "" if self.name == LOCAL_NAME else f"{self.name}:"

    @property
    def session_env(self) -> tuple[str, ...]:
        """Environment of the SSH sessions (the commands a deploy runs)."""
        extra = BUILDKIT_ENV if self.name == BUILDKIT_NAME else ()
        return (f"DOCKER_HOST={self.docker_host}", *extra)

    @property
    def dir(self) -> Path:
        return self.lay.host_dir(self.name)

    @property
    def addr(self) -> str:
        return self.ns.inside_addr if self.ns else LOCAL_ADDR

    @property
    def port(self) -> int:
        if self.ns:
            return NETNS_SSH_PORT
        return BUILDKIT_SSH_PORT if self.name == BUILDKIT_NAME else LOCAL_SSH_PORT

    @property
    def docker_host(self) -> str:
        return self.ns.docker_host if self.ns else MAIN_DOCKER_HOST

    @property
    def git_base_url(self) -> str:
        # the git daemon runs in the root namespace; a namespace host reaches it over its veth
        return f"git://{self.ns.outside_addr if self.ns else LOCAL_ADDR}:{GIT_PORT}/"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def sshd_pid(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    def nsenter(self) -> list[str]:
        """Command prefix that runs a program in this host's network namespace."""
        # nsenter, not "ip netns exec": that remounts /sys and dockerd then dies with
        # "Devices cgroup isn't mounted"
        return ["nsenter", f"--net={self.ns.netns_path}"] if self.ns else []

    def model(self) -> SandboxHost:
        return SandboxHost(
            name=self.name,
            host=self.addr,
            port=self.port,
            username=DEPLOY_USER,
            private_key_path=self.lay.client_key,
            host_key=public_key_line(Path(f"{self.host_key}.pub")),
            docker_host=self.docker_host,
            git_base_url=self.git_base_url,
        )


def sshd_config_text(spec: HostSpec) -> str:
    return "\n".join([
        "# written by deploy_runs.sandbox on every up(); edits are overwritten",
        f"ListenAddress {spec.addr}",
        f"Port {spec.port}",
        f"HostKey {spec.host_key}",
        f"PidFile {spec.dir / 'sshd.daemon.pid'}",
        f"AuthorizedKeysFile {spec.lay.authorized_dir}/%u",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        # the deploy tool probes health checks over direct-tcpip channels
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        # tests open many connections at once; the default 10:30:100 drops some at random
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        f"SetEnv {' '.join(spec.session_env)}",
        f"Subsystem sftp {SFTP_SERVER}",
        "",
    ])


def sshd_target(spec: HostSpec) -> StopTarget:
    return StopTarget(f"{spec.label}sshd", spec.sshd_pid, str(spec.sshd_config), 5.0)


def sshd_running(spec: HostSpec) -> bool:
    t = sshd_target(spec)
    return running_pid(t.pidfile, t.marker) is not None


def check_sshd_port(spec: HostSpec) -> None:
    """Fail unless this host's sshd runs or its address is free for it."""
    if not sshd_running(spec) and port_open(spec.addr, spec.port, timeout=0.3):
        raise SandboxError(f"{spec.addr}:{spec.port} is taken by a process the sandbox did not start")


def start_sshd(spec: HostSpec) -> list[Pending]:
    """Start this host's sshd unless it runs with the current config (restart if it changed)."""
    ensure_keypair(spec.host_key)
    text = sshd_config_text(spec)
    changed = not spec.sshd_config.exists() or spec.sshd_config.read_text() != text
    target = sshd_target(spec)
    pid = running_pid(target.pidfile, target.marker)
    if pid is not None and changed:
        log.info("sshd config of %s changed: restarting it", spec.name)
        stop_all([target])
        pid = None
    if pid is not None:
        return []
    mkdir(spec.dir)
    if changed:
        write_atomic(spec.sshd_config, text, 0o644)
    check_sshd_port(spec)
    mkdir(Path("/run/sshd"))  # privilege separation directory
    run([SSHD, "-t", "-f", str(spec.sshd_config)])
    pid = spawn([*spec.nsenter(), SSHD, "-D", "-e", "-f", str(spec.sshd_config)],
                logfile=spec.sshd_log, pidfile=spec.sshd_pid, env=daemon_env())
    addr, port = spec.addr, spec.port
    return [Pending(target.name, lambda: port_open(addr, port, timeout=0.3), pid, spec.sshd_log,
                    SSHD_TIMEOUT)]
