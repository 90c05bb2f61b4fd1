"""Public data models of the sandbox: what a test or the demo needs to reach a host."""

from __future__ import annotations

from pathlib import Path

import pydantic


class SandboxHost(pydantic.BaseModel):
    """One SSH+Docker target server of the sandbox."""

    name: str
    """``"local"`` for the loopback host, else the namespace host's name (e.g. ``"h1"``)."""
    host: str
    """``"127.0.0.1"`` or the namespace address, e.g. ``"10.200.1.2"``."""
    port: int
    """2222 for the loopback host, 22 inside a namespace."""
    username: str
    """Non-root login user (``"deploy"``, member of the ``docker`` group)."""
    private_key_path: Path
    """Client private key (ed25519, OpenSSH format); logs in as ``username`` and as ``root``."""
    host_key: str
    """The host's public key line ``"ssh-ed25519 AAAA..."`` (no comment); ``""`` if not generated yet."""
    docker_host: str
    """Engine socket that this host's SSH sessions use (``DOCKER_HOST``)."""
    git_base_url: str
    """Prefix under which the repos in ``SandboxInfo.git_dir`` are served to this host."""

    def known_hosts_line(self) -> str:
        """The line for an OpenSSH ``known_hosts`` file that pins this host's key."""
        target = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{target} {self.host_key}"


class SandboxInfo(pydantic.BaseModel):
    """What the sandbox consists of and which parts are alive."""

    dir: Path
    git_dir: Path
    """Directory of bare repos served by the sandbox git daemon."""
    hosts: list[SandboxHost]
    running: dict[str, bool]
    """Component name -> alive: ``dockerd``, ``sshd``, ``git-daemon``, and per namespace host
    ``<name>:netns``, ``<name>:dockerd``, ``<name>:sshd``."""

    def host(self, name: str) -> SandboxHost:
        """The host called ``name`` (``KeyError`` if there is none)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)
