"""Saving the sandbox's hosts as SSHServer blocks (`sandbox-local`, `sandbox-h1`, ...)."""

from __future__ import annotations

from blocks import SSHServer
from deploy_runs.sandbox import SandboxHost, SandboxInfo
from deploy_runs.sandbox.engine import PROXY_IMAGE


def server_block(host: SandboxHost) -> SSHServer:
    return SSHServer(
        host=host.host, port=host.port, username=host.username,
        private_key=host.private_key_path.read_text(), host_key=host.host_key,
        connect_timeout=10,
        proxy_image=PROXY_IMAGE,  # no registry here: built by the sandbox on every engine
    )


def block_name(host: SandboxHost) -> str:
    return f"sandbox-{host.name}"


def save_server_blocks(info: SandboxInfo) -> list[str]:
    names = []
    for host in info.hosts:
        server_block(host).save(block_name(host), overwrite=True)
        names.append(block_name(host))
    return names
