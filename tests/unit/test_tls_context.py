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
