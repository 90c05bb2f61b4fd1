"""Where the local server may listen, and who may use it (deploy_runs/prefect_server.py): beyond
loopback only with Prefect's API auth string; CSRF on and CORS from its own UI by default."""

from __future__ import annotations

import base64

import pytest
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_SERVER_API_AUTH_STRING,
    PREFECT_UI_API_URL,
    PREFECT_UI_URL,
    temporary_settings,
)

from deploy_runs.errors import DeployRunsError
from deploy_runs.prefect_local import api_url
from deploy_runs.prefect_server import (
    UnprotectedAPI,
    basic_authorization,
    check_bind,
    configured_auth_string,
    is_loopback,
    own_origins,
)


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.5.5.5", "127.255.255.254", "::1", "[::1]", "localhost", "LocalHost",
    "localhost.", "::ffff:127.0.0.1",
])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", [
    "0.0.0.0", "::", "", "10.0.0.5", "192.168.1.20", "203.0.113.10", "128.0.0.1", "fd00::5",
    "::ffff:10.0.0.5", "example.com", "prefect.example.com", "localhost.example.com",
    "127.0.0.1.nip.io", "my-localhost",
])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_needs_no_auth_string(host):
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_beyond_loopback_without_an_auth_string_is_refused_saying_how_to_set_it(host):
    for missing in (None, ""):
        with pytest.raises(UnprotectedAPI) as refused:
            check_bind(host, missing)
        message = str(refused.value)
        assert "PREFECT_SERVER_API_AUTH_STRING=" in message
        assert "PREFECT_API_AUTH_STRING" in message
        assert isinstance(refused.value, DeployRunsError)  # the CLI prints it, exit code 2
    check_bind(host, "admin:s3cret")


def test_the_auth_string_is_read_from_prefects_settings_per_side():
    with temporary_settings(restore_defaults={PREFECT_SERVER_API_AUTH_STRING,
                                              PREFECT_API_AUTH_STRING}):
        assert configured_auth_string("server") is None
        assert configured_auth_string("client") is None
        with temporary_settings(updates={PREFECT_SERVER_API_AUTH_STRING: "admin:server"}):
            assert configured_auth_string("server") == "admin:server"
            assert configured_auth_string("client") is None
        with temporary_settings(updates={PREFECT_API_AUTH_STRING: "admin:client"}):
            assert configured_auth_string("client") == "admin:client"
        with temporary_settings(updates={PREFECT_SERVER_API_AUTH_STRING: ""}):
            assert configured_auth_string("server") is None


def test_the_header_is_prefects_basic_authorization():
    assert basic_authorization("admin:pw") == b"Basic " + base64.b64encode(b"admin:pw")


def test_the_own_origins_are_the_uis_and_the_listening_address():
    # (independent of a PREFECT_API_URL in the environment, as the integration tests set)
    others = {PREFECT_API_URL, PREFECT_UI_URL}
    with temporary_settings(updates={PREFECT_UI_API_URL: "http://127.0.0.1:4300/api"},
                            restore_defaults=others):
        assert own_origins("127.0.0.1", 4300) == ["http://127.0.0.1:4300",
                                                   "http://localhost:4300"]
    with temporary_settings(updates={PREFECT_UI_API_URL: "https://Prefect.example.com/api"},
                            restore_defaults=others):
        assert own_origins("0.0.0.0", 4200) == ["https://prefect.example.com",
                                                 "http://127.0.0.1:4200", "http://localhost:4200"]
        assert own_origins("10.0.0.5", 4200)[-1] == "http://10.0.0.5:4200"
        assert own_origins("fd00::5", 4200)[-1] == "http://[fd00::5]:4200"
    with temporary_settings(restore_defaults={PREFECT_UI_API_URL, PREFECT_API_URL, PREFECT_UI_URL}):
        # not Prefect's guess for the UI's API (its default port 4200)
        assert own_origins("127.0.0.1", 4300) == ["http://127.0.0.1:4300",
                                                   "http://localhost:4300"]
    with temporary_settings(updates={PREFECT_API_URL: "https://prefect.example.com/api"},
                            restore_defaults={PREFECT_UI_API_URL, PREFECT_UI_URL}):
        assert own_origins("127.0.0.1", 4200)[0] == "https://prefect.example.com"


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:4200/api"), ("127.5.5.5", "http://127.5.5.5:4200/api"),
    ("0.0.0.0", "http://127.0.0.1:4200/api"), ("::", "http://[::1]:4200/api"),
    ("localhost", "http://127.0.0.1:4200/api"), ("10.0.0.5", "http://10.0.0.5:4200/api"),
])
def test_the_api_url_this_machine_uses(host, url):
    assert api_url(4200, host) == url
