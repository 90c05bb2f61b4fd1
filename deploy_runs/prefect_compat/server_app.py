"""Prefect's server app with the seam's server-side workarounds: SQLite read-then-write requests
begun IMMEDIATE (`busy_sqlite`) and a database that does not answer answered 503
(`database_away`).
"""

from __future__ import annotations

from deploy_runs.prefect_compat.busy_sqlite import ASGIApp, BeginImmediate, sqlite_configuration
from deploy_runs.prefect_compat.database_away import AnswerDatabaseAway, database_away_is_retryable


def server_app() -> ASGIApp:
    """Prefect's server app (API, UI, services), as `prefect server start` creates it; on
    SQLite with the database configuration of `sqlite_configuration`; a database that does
    not answer is a 503 (`database_away_is_retryable`)."""
    from prefect.server.api.server import create_app as prefect_app
    from prefect.server.database.dependencies import set_database_config
    from prefect.server.utilities.database import get_dialect
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    if get_dialect(url).name == "sqlite":
        set_database_config(sqlite_configuration(url))
    database_away_is_retryable()
    return BeginImmediate(AnswerDatabaseAway(prefect_app(final=True)))
