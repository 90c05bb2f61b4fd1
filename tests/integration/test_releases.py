"""Old releases are pruned: after each Completed run the server keeps the images of the app's
newest `keep_releases` releases, never the current one, and the run's log lists what it
removed; `deploy-runs prune APP --keep N` does the same on demand."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from deploy_runs import RunStatus

pytestmark = pytest.mark.timeout(420)


def app_images(docker_client, app: str) -> set[str]:
    return {tag for image in docker_client.images.list(filters={"label": f"deploy-runs.app={app}"})
            for tag in image.tags}


def test_after_eight_deploys_the_server_holds_the_last_three_releases(client, make_app,
                                                                     docker_client):
    app = make_app("hello", spec_changes={"keep_releases": 3})
    releases = []
    for n in range(8):
        if n:
            app.push({"site/index.html": f"<h1>release {n}</h1>\n"}, f"release {n}")
        run = client.wait(client.deploy(app.name).id, timeout=180)
        assert run.status is RunStatus.COMPLETED, run.error
        releases.append({s.image for s in run.services})
    assert all(len(r) == 1 for r in releases) and len(set.union(*releases)) == 8
    assert app_images(docker_client, app.name) == set.union(*releases[-3:])
    said = [line.text for line in client.logs(run.id) if line.text.startswith("Pruned")]
    (oldest,) = releases[-4]
    assert said == [f"Pruned: image {oldest} (keeping the newest 3 release(s))"], said

    # on demand: keep the current release only
    done = subprocess.run([sys.executable, "-m", "deploy_runs.cli", "prune", app.name,
                           "--keep", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert app_images(docker_client, app.name) == releases[-1]
    for (gone,) in releases[-3:-1]:
        assert f"image {gone}" in done.stdout
    assert "release 7" in httpx.get(app.url(), timeout=5).text
