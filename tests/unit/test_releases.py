"""Which images of an app's releases are kept on its servers (deploy_runs/releases.py)."""

from __future__ import annotations

from deploy_runs import commands as c
from deploy_runs.releases import releases_to_keep, to_remove


def img(n: int, service: str = "web") -> str:
    return f"deploy-runs/shop-{service}:{n:012d}"


def test_the_newest_distinct_releases_are_kept():
    runs = [("Completed", [img(8), img(1, "api")]), ("Completed", [img(8), img(1, "api")]),
            ("Completed", [img(7), img(1, "api")]), ("Completed", [img(6), img(0, "api")]),
            ("Completed", [img(5), img(0, "api")])]
    # a run that changed nothing is the same release again: 8, 7, 6 are the newest three
    assert releases_to_keep(runs, 3) == {img(8), img(7), img(6), img(1, "api"), img(0, "api")}
    assert releases_to_keep(runs, 1) == {img(8), img(1, "api")}


def test_failed_runs_newer_than_the_oldest_release_kept_keep_their_images():
    runs = [("Failed", [img(9)]), ("Completed", [img(8)]), ("Failed", [img(7)]),
            ("Completed", [img(6)]), ("Failed", [img(5)]), ("Completed", [img(4)])]
    assert releases_to_keep(runs, 2) == {img(9), img(8), img(7), img(6)}
    assert releases_to_keep([("Failed", [])], 2) == set()


def test_only_what_is_not_kept_is_removed():
    present = [img(1), img(2), img(3), "deploy-runs/shop-web:<none>", ""]
    assert to_remove(present, {img(2)}) == [img(1), img(3)]


def test_the_commands_name_the_app_by_its_label_and_remove_by_tag_without_force():
    assert list(c.docker_app_images("shop").argv) == [
        "docker", "image", "ls", "--filter", "label=deploy-runs.app=shop",
        "--format", "{{.Repository}}:{{.Tag}}"]
    assert list(c.docker_remove_image(img(1)).argv) == ["docker", "image", "rm", "--", img(1)]
