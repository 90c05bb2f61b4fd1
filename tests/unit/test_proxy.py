"""The proxy's pure parts: its files, ports, the switch script's text and what it prints."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from blocks import Application, Service, SSHServer
from deploy_runs import proxy
from deploy_runs.steps.start import runtime_config_hash


def test_an_app_file_reads_back_as_its_routes() -> None:
    routes = {8080: 20001, 9090: 29999}
    text = proxy.app_conf("shop", routes)
    assert proxy.parse_app_conf(text) == routes
    assert "listen 8080;" in text and "proxy_pass http://127.0.0.1:20001;" in text
    assert proxy.parse_app_conf(proxy.app_conf("shop", {})) == {}


def test_loopback_ports_stay_out_of_the_ephemeral_range_and_move_on_when_taken() -> None:
    ports = {proxy.loopback_port("shop", "web", f"run-{i}") for i in range(200)}
    assert all(20000 <= p < 30000 for p in ports)
    assert len(ports) > 150  # spread, not one port for every run
    first = proxy.loopback_port("shop", "web", "run-1")
    assert proxy.loopback_port("shop", "web", "run-1") == first
    assert proxy.loopback_port("shop", "web", "run-1", attempt=1) != first


def test_the_ports_column_of_docker_ps() -> None:
    column = "127.0.0.1:20123->8080/tcp"
    assert proxy.loopback_of(column, 8080) == 20123
    assert proxy.loopback_of(column, 80) is None
    direct = "0.0.0.0:8080->80/tcp, :::8080->80/tcp"
    assert proxy.loopback_of(direct, 80) is None
    assert proxy.published(direct) == [("0.0.0.0", 8080, 80), ("::", 8080, 80)]
    assert proxy.published("") == []


def test_the_switch_prints_the_old_workers() -> None:
    assert proxy.old_workers("removed x\nold-workers: 12 345\n") == {12, 345}
    assert proxy.old_workers("old-workers:\n") == set()
    assert proxy.old_workers("") == set()
    top = "PID                 COMMAND\n4242                nginx: master process\n77  nginx: worker"
    assert proxy.process_ids(top) == {4242, 77}


def test_the_switch_script_is_valid_sh_with_its_values_quoted() -> None:
    new_file = proxy.new_conf_file("shop", "run-1")
    command = proxy.apply_script("shop", "nginx:stable-alpine", [8080, 9090], new_file)
    assert command.argv[:2] == ("sh", "-c")
    script = command.argv[2]
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert "app=shop;" in script and f"new={new_file}\n" in script
    assert "for p in 8080 9090; do" in script
    assert "__" not in script.replace("__deploy_runs", "")  # every placeholder filled
    # the whole command line survives the remote shell as one argument
    assert shlex.split(str(command)) == list(command.argv)


def _app(**changes) -> Application:
    server = SSHServer(host="127.0.0.1", private_key="k")
    return Application(name="shop", repository="https://example.com/shop.git", server=server,
                       services=[Service(name="web", container_port=80, host_port=8080)],
                       **changes)


def test_proxy_is_on_by_default_and_the_drain_is_bounded() -> None:
    app = _app()
    assert app.proxy is True and app.drain_seconds == 30
    assert _app(proxy=False).proxy is False
    with pytest.raises(ValueError, match="drain_seconds"):
        _app(drain_seconds=-1)


def test_a_proxy_image_is_a_docker_reference_nothing_else() -> None:
    assert SSHServer(host="h", private_key="k").proxy_image == proxy.DEFAULT_IMAGE
    SSHServer(host="h", private_key="k", proxy_image="registry.example:5000/nginx:1.27@sha256:"
              + "0" * 64)
    for bad in ("nginx; rm -rf /", "-nginx", "nginx latest", "$(id)"):
        with pytest.raises(ValueError, match="proxy_image"):
            SSHServer(host="h", private_key="k", proxy_image=bad)


def test_going_behind_the_proxy_replaces_the_container() -> None:
    service = Service(name="web", container_port=80, host_port=8080)
    assert runtime_config_hash("img", service, "d", proxied=True) != \
        runtime_config_hash("img", service, "d", proxied=False)
    assert runtime_config_hash("img", service, "d") == \
        runtime_config_hash("img", service, "d", proxied=False)


def test_each_engine_has_its_own_directory_of_files(tmp_path) -> None:
    """Before a proxy runs, servers sharing the deploy user's home (the sandbox's hosts) but
    not an engine use different directories; reading an app that has no file gives nothing,
    not an error. (No `docker` on this PATH: no proxy container to ask.)"""
    import shutil

    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("cksum", "cut", "cat", "printf"):
        if found := shutil.which(tool):
            (tools / tool).symlink_to(found)
    home = tmp_path / "home"
    home.mkdir()

    def run(script: str, docker_host: str | None) -> str:
        env = {"PATH": str(tools), **({"DOCKER_HOST": docker_host} if docker_host else {})}
        return subprocess.run(["/bin/sh", "-c", script], cwd=home, env=env,
                              capture_output=True, text=True, check=True).stdout

    hosts = (None, "unix:///var/run/docker-a.sock", "unix:///var/run/docker-b.sock")
    where = {h: run(proxy._proxy_dir() + '; echo "$dir"', h).strip() for h in hosts}
    assert len(set(where.values())) == 3
    assert all(d.startswith(f"{home}/deploy-runs/proxy/engine-") for d in where.values())
    read = proxy.read_conf("shop").argv[2]
    assert run(read, None) == ""
    Path(where[None]).mkdir(parents=True)
    (Path(where[None]) / "app-shop.conf").write_text(proxy.app_conf("shop", {80: 20001}))
    assert proxy.parse_app_conf(run(read, None)) == {80: 20001}
    assert run(read, hosts[1]) == ""
