"""The time window of a history route: `[from, to)` from its query, with the route's default span.

One rule for every route that reads a window (utilization, zone activity, a vehicle's track): `to`
defaults to now, `from` to the route's default span before `to`, times without an offset are UTC,
and a window that does not run forward is a 422. Each route adds its own bound on the span.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import HTTPException

from geofence.store import utc


def window(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = utc(end) if end else datetime.now(UTC)
    start = utc(start) if start else end - default
    if start >= end:
        raise HTTPException(422, "'from' must be before 'to'")
    return start, end
