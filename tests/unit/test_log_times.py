"""Log record times: strictly increasing in the microseconds Prefect stores (no server)."""

from __future__ import annotations

import itertools
import logging

from prefect.types._datetime import from_timestamp

from deploy_runs.prefect_compat.log_delivery import _StrictlyIncreasingTime


def stamped(created: list[float]) -> list:
    order = _StrictlyIncreasingTime()
    out = []
    for value in created:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created = value
        order.filter(record)
        out.append(from_timestamp(record.created))  # what Prefect sends and stores
    return out


def test_records_in_the_same_microsecond_or_going_back_get_distinct_stored_times():
    base = 1795000000.0000015
    times = stamped([base, base, base + 2e-7, base - 0.5, base + 1e-6, base + 3e-6])
    assert all(a < b for a, b in itertools.pairwise(times)), times
    assert len({t.microsecond for t in times}) == len(times)


def test_many_records_at_one_instant_stay_ordered_and_distinct():
    # near a half microsecond, a float bump of 1e-6 used to round to the same stored
    # microsecond (half-even), and the reader took same-time same-text records for one
    times = stamped([1795000000.4999995] * 1000)
    assert len(set(times)) == 1000
    assert times == sorted(times)
