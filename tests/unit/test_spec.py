"""App specs are validated at the edge: every problem is refused with the field named."""

from pathlib import Path

import pytest

from blocks import Application, SSHServer
from deploy_runs.errors import ConfigError
from deploy_runs.spec import load_spec, parse_spec, to_application

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SERVER = SSHServer(host="127.0.0.1", port=2222, private_key="not-used",
                   host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKYbsOHshlYwWdyJ")


def spec(**overrides):
    data = {
        "name": "hello", "repository": "git://127.0.0.1:9418/hello.git", "server": "s",
        "services": [{"name": "web", "container_port": 8080, "host_port": 18080}],
    }
    data.update(overrides)
    return data


def problems(data):
    with pytest.raises(ConfigError) as info:
        to_application(parse_spec(data), SERVER, environ={})
    return info.value.problems


@pytest.mark.parametrize("example", ["hello", "shop"])
def test_the_examples_are_valid(example):
    application = to_application(load_spec(EXAMPLES / example / "app.yaml"), SERVER, environ={})
    assert application.name == example


def test_missing_fields_are_named():
    data = spec()
    del data["repository"]
    data["services"] = [{"name": "web", "host_port": 80}]
    found = problems(data)
    assert "repository: Field required" in found
    assert "services.0.container_port: Field required" in found


def test_bad_port_is_named():
    found = problems(spec(services=[{"name": "web", "container_port": 8080, "host_port": 70000}]))
    assert found == ["services.0.host_port: Input should be less than or equal to 65535"]


@pytest.mark.parametrize("url", [
    "https://x-access-token:ghp_secret@github.com/acme/hello.git",
    "https://ghp_secret@github.com/acme/hello.git",
    "ssh://deploy:secret@git.example.com/acme/hello.git",
])
def test_a_repository_url_with_credentials_is_refused_without_echoing_them(url):
    found = problems(spec(repository=url))
    assert any(p.startswith("repository:") and "credentials" in p for p in found), found
    assert not any("secret" in p for p in found), found


def test_an_application_made_in_python_does_not_repeat_the_secret_in_its_error():
    with pytest.raises(ValueError) as info:
        Application(name="hello", repository="https://u:ghp_secret@git.example.com/a/b.git",
                    server=SERVER, services=[{"name": "web", "container_port": 8080,
                                              "host_port": 18080}])
    assert "credentials" in str(info.value) and "ghp_secret" not in str(info.value)


@pytest.mark.parametrize("url", [
    "ssh://git@git.example.com/acme/hello.git", "git@github.com:acme/hello.git",
    "https://git.example.com/acme/hello.git", "git://127.0.0.1:9418/hello.git",
])
def test_a_repository_url_with_an_ssh_user_or_none_is_accepted(url):
    application = to_application(parse_spec(spec(repository=url)), SERVER, environ={})
    assert application.repository == url


def test_unknown_field_is_refused_not_ignored():
    found = problems(spec(servces=[]))
    assert found == ["servces: Extra inputs are not permitted"]


@pytest.mark.parametrize(("field", "value"), [
    ("name", "Hello World"), ("name", "a;rm -rf /"), ("branch", "--upload-pack=x"),
    ("branch", "main;touch x"), ("repository", "-oProxyCommand=x"), ("repository", "a b"),
    ("branch", "main\n"), ("repository", "git://h/x.git\n"),
    ("url", "javascript:alert(1)"), ("url", "https://x.example/\n"), ("keep_releases", 0),
])
def test_unsafe_names_refs_and_urls_are_refused(field, value):
    found = problems(spec(**{field: value}))
    assert any(p.startswith(f"{field}:") for p in found), found


@pytest.mark.parametrize(("field", "value"), [
    ("name", "Web"), ("context", "../outside"), ("dockerfile", "/etc/passwd"),
    ("env", {"BAD-NAME": "x"}), ("env", {"A": "two\nlines"}),
])
def test_unsafe_service_fields_are_refused(field, value):
    service = {"name": "web", "container_port": 8080, "host_port": 18080, field: value}
    found = problems(spec(services=[service]))
    assert any(p.startswith(f"services.0.{field}") for p in found), found


def test_health_check_path_must_be_a_path():
    service = {"name": "web", "container_port": 8080, "host_port": 18080,
               "health_check": {"path": "/ok; touch x"}}
    assert any(p.startswith("services.0.health_check.path") for p in problems(spec(services=[service])))


def test_duplicate_services_and_ports_are_refused():
    services = [{"name": "web", "container_port": 8080, "host_port": 18080},
                {"name": "web", "container_port": 8080, "host_port": 18080}]
    found = problems(spec(services=services))
    assert any("duplicate service name" in p for p in found), found
    # the same host port for two services (their names differ)
    services[1]["name"] = "api"
    found = problems(spec(services=services))
    assert any("host_port used twice: 18080" in p for p in found), found


def test_secret_values_come_from_the_environment():
    service = {"name": "web", "container_port": 8080, "host_port": 18080,
               "secret_env": {"TOKEN": "${HELLO_TOKEN}", "PLAIN": "literal"}}
    application = to_application(parse_spec(spec(services=[service])), SERVER,
                                 environ={"HELLO_TOKEN": "s3cret"})
    assert application.secrets_for("web") == {"TOKEN": "s3cret", "PLAIN": "literal"}
    assert "s3cret" not in repr(application)


def test_missing_secret_environment_variable_is_named():
    service = {"name": "web", "container_port": 8080, "host_port": 18080,
               "secret_env": {"TOKEN": "${NOT_SET_ANYWHERE}"}}
    assert problems(spec(services=[service])) == [
        "services.0.secret_env.TOKEN: environment variable NOT_SET_ANYWHERE is not set"]


def test_yaml_errors_and_missing_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(ConfigError, match="No such file"):
        load_spec(tmp_path / "missing.yaml")


def test_server_host_key_must_be_a_key_line():
    with pytest.raises(ValueError, match="host_key"):
        SSHServer(host="h", private_key="k", host_key="not a key")


@pytest.mark.parametrize("url", ["https://ghp_secret@git.example.com/a b.git",
                                 "-https://u:ghp_secret@host/x.git", "https://x/ghp_secret\n"])
def test_an_invalid_repository_url_is_refused_without_echoing_it(url):
    with pytest.raises(ValueError) as info:
        Application(name="hello", repository=url, server=SERVER,
                    services=[{"name": "web", "container_port": 8080, "host_port": 18080}])
    assert "repository" in str(info.value) and "ghp_secret" not in str(info.value)


def test_the_default_time_limits_are_the_readme_s():
    import re
    from pathlib import Path

    from blocks.application import Timeouts

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    said = re.search(r"`timeouts`: `provision` (\d+) s, `fetch` (\d+), `build` (\d+), "
                     r"`start` (\d+), `health` (\d+), `run` (\d+)", readme)
    assert said, "the README no longer states the default limits"
    defaults = Timeouts()
    assert [int(v) for v in said.groups()] == [
        defaults.provision, defaults.fetch, defaults.build, defaults.start, defaults.health,
        defaults.run]
