"""The proxy's pure parts: its files, ports, the switch script's text and what it prints."""

from __future__ import annotations

import shlex
import subprocess

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
    """Servers sharing the deploy user's home (the sandbox's hosts) but not an engine read
    different directories; reading an app that has no file gives nothing, not an error."""
    def read(docker_host: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", **({"DOCKER_HOST": docker_host} if docker_host else {})}
        return subprocess.run(proxy.read_conf("shop").argv, cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True)

    assert read(None).stdout == ""
    script = proxy.read_conf("shop").argv[2]
    where = {}
    for host in (None, "unix:///var/run/docker-a.sock", "unix:///var/run/docker-b.sock"):
        env = {"PATH": "/usr/bin:/bin", **({"DOCKER_HOST": host} if host else {})}
        where[host] = subprocess.run(["sh", "-c", script.split(";")[0] + '; echo "$dir"'],
                                     env=env, capture_output=True, text=True,
                                     check=True).stdout.strip()
    assert len(set(where.values())) == 3
    assert all(d.startswith("deploy-runs/proxy/engine-") for d in where.values())
    (tmp_path / where[None]).mkdir(parents=True)
    (tmp_path / where[None] / "app-shop.conf").write_text(proxy.app_conf("shop", {80: 20001}))
    assert proxy.parse_app_conf(read(None).stdout) == {80: 20001}
    assert read("unix:///var/run/docker-a.sock").stdout == ""
