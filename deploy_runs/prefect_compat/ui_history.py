"""Light run rows from the endpoint behind the Prefect UI's run-history chart.

Covers Prefect 3.9.0-3.9.1: `POST /ui/flow_runs/history` (prefect.server.api.ui.flow_runs), a
route of the UI's own, not of the documented REST API: rows of id, state type, timestamp and
duration, without the parameters, labels and state details a full flow run carries (statistics
over hundreds of runs read ~20x less). Its body and answer are checked by
tests/unit/test_prefect_seam.py; should it go, `read_flow_runs` gives the same facts.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.sorting import FlowRunSort

PATH = "/ui/flow_runs/history"


async def flow_run_history(client: PrefectClient, flow_runs: FlowRunFilter, limit: int,
                           offset: int) -> list[dict[str, Any]]:
    """One page of rows (`id`, `state_type`, `timestamp`, `duration`), oldest first."""
    response = await client.request("POST", PATH, json={  # type: ignore[arg-type] - a UI route
        "sort": FlowRunSort.EXPECTED_START_TIME_ASC.value, "limit": limit, "offset": offset,
        "flow_runs": flow_runs.model_dump(mode="json", exclude_unset=True),
    })
    return response.json()
