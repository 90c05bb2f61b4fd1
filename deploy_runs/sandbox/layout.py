"""Where the sandbox keeps its files, its state (host allocations) and its lock.

Layout of the sandbox directory::

    state.json                 host allocations: name -> {index, active}
    .lock                      flock that serialises up/add_host/down across processes
    keys/id_ed25519{,.pub}     client key (logs in as deploy and as root)
    authorized_keys/<user>     AuthorizedKeysFile of every sandbox sshd
    git/                       bare repos served by the git daemon (git_dir)
    git-daemon/                git-daemon.pid, git-daemon.log
    dockerd/                   the main engine, only if the sandbox started it
    hosts/<name>/              host key, sshd_config, sshd.pid, sshd.log; namespace hosts also
                               dockerd.pid, dockerd.log and docker/ (the engine's data-root)

A ``<component>.pid`` file holds the PID of a process the sandbox started; ``down()`` signals
only those, and only while the command line still carries the sandbox's own path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import NetnsHost
from .processes import SandboxError, write_atomic

DEFAULT_DIR = Path("/var/lib/deploy-runs/sandbox")
ENV_DIR = "DEPLOY_RUNS_SANDBOX_DIR"
LOCK_TIMEOUT = 300.0


def sandbox_dir() -> Path:
    """``$DEPLOY_RUNS_SANDBOX_DIR``, default ``/var/lib/deploy-runs/sandbox`` (made absolute)."""
    raw = os.environ.get(ENV_DIR) or str(DEFAULT_DIR)
    return Path(raw).expanduser().absolute()


@dataclass(frozen=True)
class Layout:
    dir: Path

    @classmethod
    def current(cls) -> Layout:
        d = sandbox_dir()
        if any(c.isspace() for c in str(d)):
            # sshd_config paths (AuthorizedKeysFile) cannot contain whitespace
            raise SandboxError(f"sandbox dir must not contain whitespace: {d!r}")
        return cls(d)

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / ".lock"

    @property
    def client_key(self) -> Path:
        return self.dir / "keys" / "id_ed25519"

    @property
    def authorized_dir(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def git_dir(self) -> Path:
        return self.dir / "git"

    @property
    def git_daemon_dir(self) -> Path:
        return self.dir / "git-daemon"

    @property
    def dockerd_dir(self) -> Path:
        return self.dir / "dockerd"

    def host_dir(self, name: str) -> Path:
        return self.dir / "hosts" / name


def mkdir(path: Path, mode: int = 0o755) -> None:
    """mkdir -p; the directories it creates get ``mode`` whatever the umask (the deploy user
    must traverse them to its authorized keys)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        with contextlib.suppress(FileExistsError):
            m.mkdir()
            os.chmod(m, mode)


@dataclass
class State:
    """Namespace hosts ever added (name -> index N of 10.200.N.0/24), and which are active
    (added and not taken down since)."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, lay: Layout) -> State:
        try:
            data = json.loads(lay.state_file.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise SandboxError(f"unreadable state file {lay.state_file}: {exc}") from exc
        return cls(hosts=dict(data.get("hosts", {})))

    def save(self, lay: Layout) -> None:
        write_atomic(lay.state_file, json.dumps({"version": 1, "hosts": self.hosts}, indent=2) + "\n")

    def all(self) -> list[NetnsHost]:
        items = sorted(self.hosts.items(), key=lambda kv: int(kv[1]["index"]))
        return [NetnsHost(name, int(h["index"])) for name, h in items]

    def active(self) -> list[NetnsHost]:
        return [h for h in self.all() if self.hosts[h.name].get("active")]

    def activate(self, name: str) -> NetnsHost:
        """The host ``name``, marked active; a new name gets the lowest free index (kept for good,
        so the host has the same address next time)."""
        if name not in self.hosts:
            used = {int(h["index"]) for h in self.hosts.values()}
            index = next((i for i in range(1, 255) if i not in used), None)
            if index is None:
                raise SandboxError("no free 10.200.N.0/24 network left for a namespace host")
            self.hosts[name] = {"index": index}
        self.hosts[name]["active"] = True
        return NetnsHost(name, int(self.hosts[name]["index"]))

    def deactivate_all(self) -> None:
        for h in self.hosts.values():
            h["active"] = False


@contextlib.contextmanager
def locked(lay: Layout) -> Iterator[None]:
    """Hold the sandbox lock (a flock, released if the process dies)."""
    mkdir(lay.dir)
    fd = os.open(lay.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise SandboxError(f"sandbox is locked by another process: {lay.lock_file}") from exc
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
