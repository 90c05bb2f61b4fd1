"""Network-namespace hosts: a netns with a veth pair to the root namespace."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .processes import run

log = logging.getLogger("deploy_runs.sandbox")

NETNS_DIR = Path("/var/run/netns")


@dataclass(frozen=True)
class NetnsHost:
    name: str
    index: int

    @property
    def netns(self) -> str:
        return f"dr-{self.name}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def veth_outside(self) -> str:
        return f"drv{self.index}"  # interface names are limited to 15 characters

    @property
    def outside_addr(self) -> str:
        return f"10.200.{self.index}.1"

    @property
    def inside_addr(self) -> str:
        return f"10.200.{self.index}.2"

    @property
    def docker_host(self) -> str:
        return f"unix:///var/run/docker-{self.netns}.sock"

    @property
    def exec_root(self) -> str:
        return f"/var/run/docker-{self.netns}"

    @property
    def bip(self) -> str:
        return f"172.31.{self.index}.1/24"

    def exists(self) -> bool:
        return self.netns_path.exists()

    def veth_exists(self) -> bool:
        return Path("/sys/class/net", self.veth_outside).exists()


def ensure(h: NetnsHost) -> None:
    """Create (or repair) the namespace, its veth pair, addresses and links; idempotent."""
    if not h.exists():
        log.info("creating network namespace %s", h.netns)
        run(["ip", "netns", "add", h.netns])
    if not h.veth_exists():
        # an eth0 left in the namespace from an earlier pair (e.g. the state file was lost and the
        # host got another index) would block the new one
        run(["ip", "-n", h.netns, "link", "del", "eth0"], check=False)
        # the peer is created directly inside the namespace and named eth0 there
        run(["ip", "link", "add", h.veth_outside, "type", "veth", "peer", "name", "eth0",
             "netns", h.netns])
    run(["ip", "addr", "replace", f"{h.outside_addr}/24", "dev", h.veth_outside])
    run(["ip", "link", "set", h.veth_outside, "up"])
    run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
    run(["ip", "-n", h.netns, "addr", "replace", f"{h.inside_addr}/24", "dev", "eth0"])
    run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
    # the sandbox's own addresses on the other veths (10.200.M.1, e.g. the git daemon there)
    # are reached through this host's gateway; hosts still cannot reach each other (no
    # forwarding), and nothing beyond 10.200.0.0/16 is routed
    run(["ip", "-n", h.netns, "route", "replace", "10.200.0.0/16", "via", h.outside_addr])


def delete(h: NetnsHost) -> None:
    """Remove the veth pair and the namespace (only the names that belong to this host)."""
    if h.veth_exists():
        run(["ip", "link", "del", h.veth_outside], check=False)
    if h.exists():
        log.info("deleting network namespace %s", h.netns)
        run(["ip", "netns", "del", h.netns], check=False)
