"""Zero-downtime switch through the server's reverse proxy (nginx, deploy_runs/proxy.py): a
client asking the app's public port every 10 ms, each request on a new connection, sees no
failed request during a redeploy that replaces the services, and no answer of the old
version once the new one has answered; a new version that fails its health check never
takes traffic."""

from __future__ import annotations

import pytest

from deploy_runs import RunStatus, StepStatus
from deploy_runs import proxy as proxy_module
from deploy_runs.sandbox.traffic import Answer, Client

from .conftest import http_get, wait_for

pytestmark = pytest.mark.timeout(300)


def versions(answers: list[Answer], old: str, new: str) -> list[str]:
    out = []
    for a in answers:
        assert a.body is not None, a
        assert a.body in (old, new), a.body
        out.append("old" if a.body == old else "new")
    return out


def published_ports(docker_client, app) -> dict[str, list[str]]:
    found = {}
    for container in docker_client.containers.list(
            filters={"label": f"deploy-runs.app={app.name}"}):
        ports = container.attrs["NetworkSettings"]["Ports"] or {}
        found[container.name] = sorted({b["HostIp"] for bindings in ports.values()
                                        for b in (bindings or [])})
    return found


def test_a_redeploy_behind_the_proxy_drops_no_request(client, make_app, docker_client):
    old_web, old_api = "web v1\n", "api v1\n"
    app = make_app("shop", {"web/content/index.html": old_web,
                            "api/content/index.html": old_api})
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    # the HTTP services publish on loopback only; the proxy serves their public ports
    ports = published_ports(docker_client, app)
    assert ports[f"{app.name}-web"] == ["127.0.0.1"] and ports[f"{app.name}-api"] == ["127.0.0.1"]
    assert ports[f"{app.name}-admin"] != ["127.0.0.1"]  # TCP: published directly
    assert docker_client.containers.get(proxy_module.CONTAINER).status == "running"
    assert http_get(app.url("web"))[1] == old_web

    clients = {"web": Client(app.address, app.ports["web"]),
               "api": Client(app.address, app.ports["api"])}
    wait_for(lambda: all(cl.count() >= 20 for cl in clients.values()), 30, "first answers")
    new_web, new_api = "web v2\n", "api v2\n"
    app.push({"web/content/index.html": new_web, "api/content/index.html": new_api,
              "admin/content/index.html": "admin v2\n"}, "every service: version 2")
    second = client.wait(client.redeploy(app.name).id, timeout=180)
    ended = {name: cl.count() for name, cl in clients.items()}
    wait_for(lambda: all(cl.count() >= ended[n] + 20 for n, cl in clients.items()), 30,
             "answers after the run")
    answers = {name: cl.stop() for name, cl in clients.items()}

    assert second.status is RunStatus.COMPLETED, second.error
    assert {s.name: s.container for s in second.services} == dict.fromkeys(
        ("web", "api", "admin"), "replaced")
    assert {s.name: s.port for s in second.services} == {
        "web": "proxy", "api": "proxy", "admin": "direct"}
    for name, old, new in (("web", old_web, new_web), ("api", old_api, new_api)):
        seen = answers[name]
        failed = [a for a in seen if a.body is None]
        print(f"{name}: {len(seen)} requests during the redeploy, {len(failed)} failed")
        assert failed == [], failed[:5]
        order = versions(seen, old, new)
        assert order[0] == "old" and order[-1] == "new", (order[:3], order[-3:])
        switched = order.index("new")
        assert set(order[switched:]) == {"new"}, f"{name}: an old answer after a new one"
        assert len(order) - switched >= 20
    # the old containers are gone, the new ones carry the service names
    names = {c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"deploy-runs.app={app.name}"})}
    assert names == {f"{app.name}-web", f"{app.name}-api", f"{app.name}-admin"}, names
    log = [line.text for line in client.logs(second.id, step="Health check")]
    assert any("probe web through the proxy" in t for t in log), log


def test_a_new_version_that_fails_its_health_check_never_takes_traffic(client, make_app,
                                                                       docker_client):
    old = "hello v1\n"
    app = make_app("hello", {"site/index.html": old}, spec_changes={"services": [{
        "name": "web", "context": ".", "dockerfile": "Dockerfile", "container_port": 8080,
        "host_port": 1, "health_check": {"type": "http", "path": "/", "timeout": 3,
                                         "interval": 0.2}}]})
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    web = Client(app.address, app.ports["web"])
    wait_for(lambda: web.count() >= 20, 30, "first answers")
    original = (app.source / "Dockerfile").read_text()
    # version 2 listens on another port than the one the spec names: never healthy
    app.push({"site/index.html": "hello v2\n",
              "Dockerfile": "FROM busybox:latest\nCOPY site/ /www/\n"
                            'CMD ["httpd", "-f", "-p", "9999", "-h", "/www"]\n'},
             "version 2 on the wrong port")
    second = client.wait(client.redeploy(app.name).id, timeout=180)
    count = web.count()
    wait_for(lambda: web.count() >= count + 20, 30, "answers after the run")
    seen = web.stop()

    assert second.status is RunStatus.FAILED
    assert second.step("Health check").status is StepStatus.FAILED
    message = second.error.message
    assert "service web did not become healthy" in message, message
    assert "never took traffic" in message and f"{app.name}-web keeps serving" in message
    failed = [a for a in seen if a.body is None]
    print(f"failing health check: {len(seen)} requests, {len(failed)} failed")
    assert failed == [], failed[:5]
    assert set(versions(seen, old, "hello v2\n")) == {"old"}
    assert http_get(app.url("web"))[1] == old
    # the old container still serves under its name; the new one is kept, stopped
    def containers() -> dict[str, str]:
        return {c.name: c.status for c in docker_client.containers.list(
            all=True, filters={"label": f"deploy-runs.app={app.name}"})}

    assert containers() == {f"{app.name}-web": "running", f"{app.name}-web-next": "exited"}

    # a retry of the failed step probes the kept new container again (on its own port, not
    # the public one the old container answers): it fails again, and the old one serves on
    retried = client.wait(client.retry(second.id).id, timeout=120)
    assert retried.status is RunStatus.FAILED and retried.error.step == "Health check"
    assert retried.step("Start application").status is StepStatus.SKIPPED  # reused
    assert "service web did not become healthy" in retried.error.message
    assert http_get(app.url("web"))[1] == old
    assert containers() == {f"{app.name}-web": "running", f"{app.name}-web-next": "exited"}

    # back to version 1 (its image and container unchanged: kept): the leftover new container
    # goes, and is never switched to
    app.push({"site/index.html": old, "Dockerfile": original}, "back to version 1")
    back = client.wait(client.redeploy(app.name).id, timeout=120)
    assert back.status is RunStatus.COMPLETED, back.error
    assert {s.name: s.container for s in back.services} == {"web": "kept"}
    assert http_get(app.url("web"))[1] == old
    assert containers() == {f"{app.name}-web": "running"}


def test_an_app_can_keep_direct_publishing_and_move_behind_the_proxy(client, make_app,
                                                                      docker_client):
    app = make_app("hello", spec_changes={"proxy": False})
    first = client.wait(client.deploy(app.name).id, timeout=180)
    assert first.status is RunStatus.COMPLETED, first.error
    name = f"{app.name}-web"
    assert "0.0.0.0" in published_ports(docker_client, app)[name]

    from deploy_runs.spec import register
    register(app.application.model_copy(update={"proxy": True}))
    moved = client.wait(client.redeploy(app.name).id, timeout=180)
    assert moved.status is RunStatus.COMPLETED, moved.error
    assert {s.name: s.container for s in moved.services} == {"web": "replaced"}
    assert published_ports(docker_client, app)[name] == ["127.0.0.1"]
    status, body = http_get(app.url())
    assert status == 200 and "hello" in body.lower()

    register(app.application.model_copy(update={"proxy": False}))
    back = client.wait(client.redeploy(app.name).id, timeout=180)
    assert back.status is RunStatus.COMPLETED, back.error
    assert "0.0.0.0" in published_ports(docker_client, app)[name]
    assert http_get(app.url())[0] == 200


def test_a_port_the_proxy_cannot_listen_on_fails_the_switch_in_nginx_words(client, make_app,
                                                                            docker_client):
    """Something holds the public port on another address than loopback (so Start
    application's check does not see it): nginx refuses to take the file, the previous file
    is put back, and the run fails at Health check as port-in-use, with nginx's own line."""
    import ipaddress
    import socket

    from .conftest import free_port

    # the engine's bridge address on this machine (the sandbox server): the subnet's first host
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    bridge = config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])
    port = free_port()
    squatter = socket.socket()
    squatter.bind((bridge, port))
    squatter.listen()
    try:
        app = make_app("hello")
        app.application.services[0].host_port = port
        app.application.save(app.name, overwrite=True)
        run = client.wait(client.deploy(app.name).id, timeout=180)
    finally:
        squatter.close()
    assert run.status is RunStatus.FAILED
    assert run.error.step == "Health check"
    assert "the proxy could not be switched: the proxy refused the new configuration" in \
        run.error.message or "refused the new configuration" in " ".join(run.error.output_tail)
    said = " ".join(run.error.output_tail)
    assert f"bind() to 0.0.0.0:{port} failed" in said and "Address already in use" in said
    assert run.error.suggestions and run.error.suggestions[0].kind == "port-in-use"
    # read from nginx's log as it happens, not after the switch's 10 s time limit
    assert run.step("Health check").duration < 8, run.step("Health check").duration
    # the proxy serves on, without this app's file
    proxy = docker_client.containers.get(proxy_module.CONTAINER)
    assert proxy.status == "running"
    assert not proxy.exec_run(["nginx", "-T"]).output.decode().count(f"listen {port};")
