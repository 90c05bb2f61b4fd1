"""Shared test set-up. Integration tests (tests/integration) get real parts: the project's own
sandbox (sshd + Docker engine + git host), a real Prefect server and a real process worker."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
