"""What a user gets while the Prefect API does not answer (no server)."""

from __future__ import annotations

import httpx
import pytest

from deploy_runs import logs
from deploy_runs.client import api_unavailable
from deploy_runs.errors import APIUnavailable, DeployRunsError


def test_a_transport_error_becomes_an_error_naming_the_api_url(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4299/api"}):
        error = api_unavailable(httpx.ConnectError("Connection refused"))
    assert isinstance(error, APIUnavailable) and isinstance(error, DeployRunsError)
    assert "the Prefect API at http://127.0.0.1:4299/api does not answer" in str(error)
    assert "ConnectError: Connection refused" in str(error)
    assert "deploy-runs prefect up" in str(error)
    assert api_unavailable(ValueError("x")) is None  # not about the API: left as it is


def test_a_follower_waits_for_the_api_and_one_that_does_not_follow_fails_at_once(monkeypatch):
    exc = httpx.ConnectError("refused")
    with pytest.raises(httpx.ConnectError):
        logs._Follow(follow=False).api_away(exc)
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    following = logs._Follow(follow=True)
    assert following.api_away(exc) == logs.FOLLOW_RETRY
    now[0] += logs.FOLLOW_OUTAGE - 1
    assert following.api_away(exc) == logs.FOLLOW_RETRY
    following.api_back()  # it answered: a later outage is counted afresh
    now[0] += 10
    assert following.api_away(exc) == logs.FOLLOW_RETRY
    now[0] += logs.FOLLOW_OUTAGE + 1
    with pytest.raises(httpx.ConnectError):
        following.api_away(exc)
