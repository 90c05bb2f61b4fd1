"""Prefect's server app with the seam's server-side workarounds: busy SQLite writes
(`busy_sqlite`) and a database that does not answer (`database_away`).
"""

from __future__ import annotations

from deploy_runs.prefect_compat.busy_sqlite import ASGIApp, RetryWhenBusy, sqlite_configuration
from deploy_runs.prefect_compat.database_away import AnswerDatabaseAway, database_away_is_retryable


def server_app(auth_string: str | None) -> ASGIApp:
    """Prefect's server app (API, UI, services), as `prefect server start` creates it; on
    SQLite with the database configuration of `sqlite_configuration`, busy writes run again
    in the server (requests carrying `auth_string`, when one is set); a database that does
    not answer is a 503 (`database_away_is_retryable`)."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.server.database.dependencies import set_database_config
    from prefect.server.utilities.database import get_dialect
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name == "sqlite":
        set_database_config(sqlite_configuration(url))
    database_away_is_retryable()
    return RetryWhenBusy(AnswerDatabaseAway(prefect_app(final=True)), auth_string=auth_string)
