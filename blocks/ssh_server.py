"""The server an application is deployed to, reached over SSH."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

# a Docker image reference: [registry[:port]/]path[:tag][@digest], nothing a shell would read
IMAGE_PATTERN = r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$"

_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "ssh-rsa")


class SSHServer(Block):
    """A server deploy-runs reaches over SSH, with its host key pinned.

    Example:
        ```python
        from blocks import SSHServer

        SSHServer(
            host="203.0.113.10",
            username="deploy",
            private_key=open("/path/to/id_ed25519").read(),
            host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...",
        ).save("prod-1")
        ```
    """

    _block_type_name = "Deploy Runs SSH Server"
    _block_type_slug = "deploy-runs-ssh-server"
    _description = "A server that deploy-runs deploys applications to, over SSH."

    host: str = Field(description="Host name or IP address of the server.", min_length=1)
    port: int = Field(22, ge=1, le=65535, description="SSH port of the server.")
    username: str = Field(
        "deploy", pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="User to log in as. A non-root user in the `docker` group is enough.",
    )
    private_key: SecretStr = Field(
        description="Private key (OpenSSH or PEM text) used to log in. Never logged or shown."
    )
    host_key: str | None = Field(
        None,
        description=(
            "The server's public host key, e.g. `ssh-ed25519 AAAA...` (as in known_hosts). "
            "Connections to a server offering any other key are refused."
        ),
    )
    accept_unknown_host_key: bool = Field(
        False,
        description=(
            "Trust on first use: when no host key is pinned, accept the key the server offers "
            "the first time, log its fingerprint and pin it (saved as host_key in this block); "
            "from then on any other key is refused, as with a key pinned by hand. Off by "
            "default: without a pinned key the connection is refused."
        ),
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds to wait for the SSH connection to open."
    )
    proxy_image: str = Field(
        "nginx:stable-alpine", pattern=IMAGE_PATTERN, max_length=300,
        description=(
            "Image of the reverse proxy (nginx) that serves the public ports of the apps with "
            "`proxy` on: one container, deploy-runs-proxy, per server, started by the first "
            "deploy that needs it (pulled by the server's engine if it lacks it)."
        ),
    )

    @field_validator("host_key")
    @classmethod
    def _host_key_line(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = value.split()
        if len(parts) < 2 or parts[0] not in _KEY_TYPES:
            raise ValueError(
                f"expected '<type> <base64>' with type one of {', '.join(_KEY_TYPES)}"
            )
        return f"{parts[0]} {parts[1]}"

    @property
    def address(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"
