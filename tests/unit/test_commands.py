"""Command builders: data, quoted in one place, inert against shell metacharacters."""

import shlex

import pytest

from deploy_runs import commands as c


def test_command_renders_exactly_what_runs_with_quoting():
    command = c.cmd("echo", "a b", "$(touch /tmp/x)", "it's")
    assert str(command) == "echo 'a b' '$(touch /tmp/x)' 'it'\"'\"'s'"
    assert shlex.split(str(command)) == ["echo", "a b", "$(touch /tmp/x)", "it's"]


@pytest.mark.parametrize("evil", ["; touch /tmp/canary", "$(touch /tmp/canary)",
                                  "`touch /tmp/canary`", "a\ntouch /tmp/canary", "'\"'"])
def test_hostile_values_stay_single_arguments(evil):
    command = c.docker_run("app-web", "img:1", ports=[(80, 8080)], env={"X": evil},
                           env_file=None, label_values={"k": evil})
    assert shlex.split(str(command)) == list(command.argv)
    assert f"X={evil}" in command.argv


def test_docker_build_names_tag_dockerfile_labels_and_context():
    command = c.docker_build("deploy-runs/hello-web:abc", "deploy-runs/apps/hello/repo/Dockerfile",
                             "deploy-runs/apps/hello/repo", c.labels(app="hello"))
    assert command.argv == ("docker", "build", "--tag", "deploy-runs/hello-web:abc",
                            "--file", "deploy-runs/apps/hello/repo/Dockerfile", "--force-rm",
                            "--label", "deploy-runs.app=hello", "deploy-runs/apps/hello/repo")


def test_image_lookup_names_each_wanted_tag_after_the_options():
    tags = ["deploy-runs/shop-web:0123456789ab", "deploy-runs/shop-api:ba9876543210"]
    command = c.docker_image_tags(tags)
    assert command.argv == ("docker", "image", "inspect", "--format", "{{json .RepoTags}}",
                            "--", *tags)
    assert shlex.split(str(command)) == list(command.argv)


def test_docker_run_starts_with_init_ports_env_file_and_labels():
    command = c.docker_run("hello-web", "img:1", ports=[(18080, 8080)], env={"A": "1"},
                           env_file="deploy-runs/apps/hello/web.env",
                           label_values=c.labels(app="hello", service="web", run="r1"))
    argv = command.argv
    assert argv[:3] == ("docker", "run", "--detach")
    assert "--init" in argv
    assert argv[argv.index("--publish"):argv.index("--publish") + 2] == ("--publish", "18080:8080")
    assert "A=1" in argv and "--env-file" in argv
    assert "deploy-runs.run=r1" in argv
    assert argv[-1] == "img:1"


def test_git_commands_cannot_be_turned_into_options():
    assert c.git_clone("-oProxyCommand=x", "dest").argv[-3] == "--"
    assert c.git_fetch("repo", "-oProxyCommand=x").argv[-3:] == (
        "--", "-oProxyCommand=x", "+refs/heads/*:refs/remotes/origin/*")
    # without --end-of-options, which rev-parse takes for a revision before git 2.30
    assert c.git_resolve("repo", "origin/main").argv[-1] == "origin/main^{commit}"
    for rev in ("-oProxyCommand=x", "--output=/etc/passwd"):
        with pytest.raises(ValueError):
            c.git_resolve("repo", rev)
        with pytest.raises(ValueError):
            c.git_rev_parse("repo", ["abc^{tree}", rev])


def test_layout_is_relative_to_the_users_home():
    layout = c.AppLayout("hello")
    assert layout.repo == "deploy-runs/apps/hello/repo"
    assert layout.in_repo(".") == layout.repo
    assert layout.in_repo("web") == "deploy-runs/apps/hello/repo/web"
    assert layout.env_file("web") == "deploy-runs/apps/hello/secrets/web.env"


def test_pgid_report_wraps_command_and_kill_targets_the_group():
    line = c.with_pgid_report(c.cmd("sleep", "5"))
    assert line == f"echo {c.PID_LINE_PREFIX}$$ >&2; exec sleep 5"
    assert c.kill_process_group(1234).argv == ("kill", "-KILL", "--", "-1234")


def test_image_and_container_names():
    assert c.image_tag("shop", "api", "0123456789abcdef") == "deploy-runs/shop-api:0123456789ab"
    assert c.container_name("shop", "api") == "shop-api"


def test_env_files_live_in_a_private_directory_and_stale_ones_are_removed():
    layout = c.AppLayout("hello")
    assert c.make_private_dir(layout.secrets_dir).argv == (
        "install", "-d", "-m", "0700", "--", "deploy-runs/apps/hello/secrets")
    assert str(c.remove_env_files(layout.secrets_dir, ["web.env"])) == (
        "find deploy-runs/apps/hello/secrets -maxdepth 1 -type f -name '*.env' "
        "'!' -name web.env -delete")


def test_links_that_leave_the_checkout_are_found():
    repo = "deploy-runs/apps/shop/repo"
    listing = "\n".join(f"{repo}/{path}\t{target}" for path, target in [
        ("web", "../../other-app"), ("Dockerfile", "/home/deploy/.ssh/authorized_keys"),
        ("site/keys", "../../../../../.ssh"), ("site/ok", "../docs/readme.md"),
        ("site/self", "."), ("a/b/c", "../../d"), ("x", "../repo/x2"), ("y", "../repository/z")])
    assert c.links_leaving(repo, listing) == [
        ("web", "../../other-app"), ("Dockerfile", "/home/deploy/.ssh/authorized_keys"),
        ("site/keys", "../../../../../.ssh"), ("y", "../repository/z")]
    assert c.symbolic_links(repo).argv[:4] == ("find", repo, "-path", f"{repo}/.git")


def test_containers_start_hardened_unless_a_service_says_otherwise():
    argv = c.docker_run("hello-web", "img:1", ports=[], env={}, env_file=None, label_values={},
                        pids_limit=4096, log_rotation=("10m", 5)).argv
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges"
    assert argv[argv.index("--pids-limit") + 1] == "4096"
    at = argv.index("--log-driver")
    assert argv[at:at + 6] == ("--log-driver", "json-file", "--log-opt", "max-size=10m",
                               "--log-opt", "max-file=5")
    plain = c.docker_run("hello-web", "img:1", ports=[], env={}, env_file=None, label_values={},
                         no_new_privileges=False).argv
    assert not {"--security-opt", "--pids-limit", "--log-driver"} & set(plain)
