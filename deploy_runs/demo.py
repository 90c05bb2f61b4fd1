"""The demo: a local sandbox server, a local Prefect, the example apps registered."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def prepare(console: Console) -> str:
    """Bring up the sandbox, save its blocks, publish and register the examples.

    Returns the URL where `hello` will answer. Expects the Prefect API to be configured.
    """
    from deploy_runs import sandbox
    from deploy_runs.gitrepo import publish
    from deploy_runs.sandbox_blocks import save_server_blocks
    from deploy_runs.spec import application_from_file, register

    console.print("[bold]1/3[/bold] sandbox: real sshd + Docker engine + git host on this machine")
    sandbox.install()
    info = sandbox.up()
    save_server_blocks(info)
    console.print("[bold]2/3[/bold] example apps: git repositories + blocks + deployments")
    hello_port = 0
    for name in ("hello", "shop"):
        sha = publish(EXAMPLES / name, info.git_dir / f"{name}.git", f"{name}: example app")
        application = application_from_file(EXAMPLES / name / "app.yaml")
        register(application)
        if name == "hello":
            hello_port = application.services[0].host_port
        console.print(f"    {name}: commit {sha[:12]}, deployment deploy-app/{name}")
    console.print("[bold]3/3[/bold] deploying hello")
    return f"http://127.0.0.1:{hello_port}/"
