"""Shell injection, attacked for real: values that reach the server (env values, build
arguments, secret values, a commit message, a health-check path) carry `;`, `$(...)`, backticks, quotes and
newline-free tricks and must arrive inert; names, refs and paths that would need a shell are
refused before anything runs. A canary file must never appear on the server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy_runs import ConfigError, RunStatus

pytestmark = pytest.mark.timeout(300)


def hostile(canary: Path) -> list[str]:
    return [f"$(touch {canary}-1)", f"`touch {canary}-2`", f"x; touch {canary}-3",
            f"x' ; touch {canary}-4 ; echo '", f'x" ; touch {canary}-5 ; echo "',
            f"x && touch {canary}-6 || true", f"$((1+1)) ${{HOME}} | touch {canary}-7 &"]


def test_hostile_values_reach_the_app_inert_and_no_canary_appears(client, make_app,
                                                                   docker_client):
    canary = Path(f"/tmp/deploy-runs-canary-{uuid.uuid4().hex}")
    values = hostile(canary)
    evil_path = f"/?a=$(touch$IFS{canary}-9)&b=';touch$IFS{canary}-10;'"
    env = {f"EVIL_{i}": value for i, value in enumerate(values)}
    dockerfile = ("FROM busybox:latest\nARG EVIL_ARG\nRUN echo \"arg=$EVIL_ARG\" > /arg.txt\n"
                  "COPY site/ /www/\n" 'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n')
    app = make_app("hello", files={"Dockerfile": dockerfile}, spec_changes={"services": [{
        "name": "web", "container_port": 8080, "host_port": 1, "env": env,
        "build_args": {"EVIL_ARG": values[2]},
        "secret_env": {"EVIL_SECRET": values[3]},
        # a health path passes validation with `$( )`, `;` and quotes (it never meets a shell:
        # probes are HTTP over an SSH channel); httpd ignores the query and answers 200
        "health_check": {"timeout": 15, "interval": 0.2, "path": evil_path}}]})
    app.push({"site/index.html": "hello\n"}, f"message with $(touch {canary}-8) and `x`")
    run = client.wait(client.deploy(app.name).id, timeout=180)
    assert run.status is RunStatus.COMPLETED, run.error

    leftovers = sorted(str(p) for p in Path("/tmp").glob(f"{canary.name}*"))
    assert leftovers == [], f"injected commands ran: {leftovers}"
    (container,) = docker_client.containers.list(filters={"label": f"deploy-runs.app={app.name}"})
    got = container.attrs["Config"]["Env"]
    for name, value in env.items():
        assert f"{name}={value}" in got, (name, value)
    assert f"EVIL_SECRET={values[3]}" in got
    assert container.exec_run(["cat", "/arg.txt"]).output.decode().strip() == f"arg={values[2]}"
    assert run.commit_message and "$(touch" in run.commit_message
    probes = [line.text for line in client.logs(run.id, step="Health check")]
    assert any(f"{evil_path}: HTTP/1." in text and " 200" in text for text in probes), probes


@pytest.mark.parametrize("ref", ["$(touch /tmp/x)", "main;id", "`id`", "--upload-pack=id",
                                 "a b", "x\ny", "a..b"])
def test_hostile_refs_are_refused_before_any_run(client, make_app, ref):
    app = make_app("hello")
    before = len(client.runs(app=app.name))
    with pytest.raises(ConfigError, match="ref"):
        client.deploy(app.name, ref=ref)
    assert len(client.runs(app=app.name)) == before


@pytest.mark.parametrize(("link", "target", "spec"), [
    # the build context itself: another app's directory on the server
    ("web", "../../other-app", {"context": "web"}),
    # the Dockerfile: a file of the deploy user's home
    ("Dockerfile.prod", "/home/deploy/.ssh/authorized_keys", {"dockerfile": "Dockerfile.prod"}),
    # a file inside the context: the app's own env file (its secrets), copied into the image
    ("site/env", "../../secrets/web.env", {}),
], ids=["context", "dockerfile", "file-in-context"])
def test_a_repository_cannot_reach_outside_itself(client, make_app, docker_client, link, target,
                                                  spec):
    from deploy_runs.gitrepo import publish

    service = {"name": "web", "container_port": 8080, "host_port": 1,
               "health_check": {"timeout": 5, "interval": 0.2}, **spec}
    app = make_app("hello", spec_changes={"services": [service]})
    (app.source / link).parent.mkdir(parents=True, exist_ok=True)
    (app.source / link).symlink_to(target)
    publish(app.source, app.bare_repo, "a link out of the repository")
    run = client.wait(client.deploy(app.name).id, timeout=120)
    assert run.status is RunStatus.FAILED, run.status
    assert run.error.step == "Build images"
    assert f"{link} -> {target}" in run.error.message
    assert "nothing was built" in run.error.message
    assert docker_client.images.list(name=f"deploy-runs/{app.name}-web") == []
