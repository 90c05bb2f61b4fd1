"""Real local target servers for the tests and the demo.

A loopback host (sshd on 127.0.0.1:2222, sessions use the main Docker engine), any number of
network-namespace hosts (netns ``dr-<name>``: sshd on 10.200.N.2:22 with its own Docker engine),
a git daemon serving the bare repos of ``SandboxInfo.git_dir``, and one client key that logs in
as ``deploy`` (non-root, in the docker group) and as ``root``.  Every engine has a locally built
``busybox:latest``.  State lives in ``sandbox_dir()``::

    from deploy_runs import sandbox

    info = sandbox.up()             # idempotent; fast when everything already runs
    local = info.host("local")
    h1 = sandbox.add_host("h1")     # another server, 10.200.1.2:22
    sandbox.stop_engine("h1")       # h1's Docker engine down (add_host("h1") restarts it)
    sandbox.down()                  # stops only what the sandbox started

Also ``python -m deploy_runs.sandbox up|down|status|add-host NAME|install``.
"""

from .layout import sandbox_dir
from .lifecycle import add_host, down, freeze_engine, status, stop_engine, up
from .models import SandboxHost, SandboxInfo
from .packages import install
from .processes import SandboxError

__all__ = [
    "SandboxError",
    "SandboxHost",
    "SandboxInfo",
    "add_host",
    "down",
    "freeze_engine",
    "install",
    "sandbox_dir",
    "status",
    "stop_engine",
    "up",
]
