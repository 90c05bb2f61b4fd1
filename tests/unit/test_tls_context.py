"""Prefect's API clients in one process share their verified TLS context (made once per CA
file) instead of each loading the CA bundle again; the unverified one is still made anew."""

from __future__ import annotations

import ssl

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import (
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    temporary_settings,
)

from deploy_runs.prefect_compat.tls import share_tls_context

API = "https://prefect.invalid/api"  # never contacted: clients are only made


def tls_context(client: object) -> ssl.SSLContext:
    # httpx keeps the context on its connection pool
    return client._client._transport._pool._ssl_context  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def shared() -> None:
    share_tls_context()


@pytest.mark.parametrize("sync_client", [True, False])
def test_clients_share_one_verified_context(sync_client):
    with temporary_settings(updates={PREFECT_API_URL: API}):
        first, second = (tls_context(get_client(sync_client=sync_client)) for _ in range(2))
    assert first is second
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded


def test_the_unverified_context_is_made_for_each_client():
    with temporary_settings(updates={PREFECT_API_URL: API,
                                     PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        first, second = (tls_context(get_client(sync_client=True)) for _ in range(2))
    assert first is not second
    assert first.verify_mode == ssl.CERT_NONE and not first.check_hostname
    with temporary_settings(updates={PREFECT_API_URL: API}):
        verified = tls_context(get_client(sync_client=True))
    assert verified.verify_mode == ssl.CERT_REQUIRED


def test_sharing_twice_changes_nothing():
    import prefect.client.orchestration as orchestration

    before = orchestration.ssl
    share_tls_context()
    assert orchestration.ssl is before
    assert orchestration.ssl.SSLContext is ssl.SSLContext  # the rest of `ssl` as it is


def test_importing_the_flow_changes_nothing_in_the_importing_process():
    """Only a worker's run process shares the context: importing flows.deploy (as spec.py and
    users' code do) leaves Prefect's clients as they are."""
    import subprocess
    import sys

    code = ("import flows.deploy, prefect.client.orchestration as o, ssl; "
            "print(o.ssl is ssl)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT__FLOW_RUN_ID"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def test_the_cli_answers_help_and_version_without_importing_prefect():
    import subprocess
    import sys

    code = ("import sys, deploy_runs.cli as cli\n"
            "for args in (['--help'], ['--version'], ['runs', '--help']):\n"
            "    try:\n        cli.app(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'httpx')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:] + done.stderr
