"""Trips and fleet utilization over any window, from the hourly rollup the geofence worker keeps.

Utilization is ride time over in-service time: the time-average share of in-service vehicles that are
in a trip. Vehicles in maintenance are not in the denominator; their hours are reported beside it.
Buckets are UTC hours or days; the window is widened to whole buckets at its start and ends before
`to`. Each figure is a sum over hourly rows, so a year of a large fleet is one indexed scan.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from api.auth import VIEWER
from api.db import DbDep, fetch
from api.inputs import FleetTime
from api.schemas import Trip, Utilization
from api.window import window
from geofence import store

router = APIRouter(prefix="/v1", tags=["utilization"], dependencies=[VIEWER])

_WIDTH = {"hour": 3600, "day": 86400}
MAX_BUCKETS = 10_000  # about 14 months of hours or 27 years of days: one answer stays small
_ROLLUP = (
    "SELECT time_bucket(%(width)s, bucket) AS b, sum(ride_s), sum(idle_s), sum(in_service_s),"
    " sum(maintenance_s), count(DISTINCT device_id) FILTER (WHERE in_service_s > 0),"
    " count(DISTINCT device_id) FILTER (WHERE maintenance_s > 0)"
    " FROM utilization_hourly WHERE bucket >= time_bucket(%(width)s, %(from)s::timestamptz) AND bucket < %(to)s"
    "{device} GROUP BY GROUPING SETS ((b), ()) ORDER BY b NULLS LAST"
)


@router.get("/trips", response_model=list[Trip])
async def list_trips(
    db: DbDep,
    device_id: str | None = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """Trips overlapping [since, until), newest first; ongoing trips included (`ongoing: true`)."""
    where, params = ["true"], {"limit": limit}
    if device_id is not None:
        where.append("device_id = %(device)s")
        params["device"] = device_id
    if since is not None:
        where.append("end_time >= %(since)s")
        params["since"] = store.utc(since)
    if until is not None:
        where.append("start_time < %(until)s")
        params["until"] = store.utc(until)
    sql = (
        "SELECT device_id, start_time, end_time, start_lon, start_lat, end_lon, end_lat, distance_m, duration_s,"
        f" points, ongoing FROM trips WHERE {' AND '.join(where)} ORDER BY start_time DESC, device_id LIMIT %(limit)s"
    )
    rows = await fetch(db, sql, params)
    return [
        {"device_id": d, "start_time": store.iso(a), "end_time": store.iso(b), "start": [x0, y0], "end": [x1, y1],
         "distance_m": dist, "duration_s": dur, "points": n, "ongoing": ongoing}
        for d, a, b, x0, y0, x1, y1, dist, dur, n, ongoing in rows
    ]  # fmt: skip


@router.get("/utilization", response_model=Utilization)
async def fleet_utilization(
    db: DbDep,
    start: Annotated[FleetTime | None, Query(alias="from")] = None,
    end: Annotated[FleetTime | None, Query(alias="to")] = None,
    bucket: Literal["hour", "day"] = "hour",
    device_id: str | None = None,
) -> dict[str, Any]:
    """Per bucket and for the whole window: utilization, ride/idle/in-service/maintenance hours and
    vehicle counts. Defaults: the last 24 hours."""
    start, end = window(start, end, timedelta(days=1))
    width = _WIDTH[bucket]
    if (end - start).total_seconds() / width > MAX_BUCKETS:
        raise HTTPException(
            422, f"at most {MAX_BUCKETS} {bucket} buckets per request: narrow the window or use bucket=day"
        )
    params = {"width": timedelta(seconds=width), "from": start, "to": end, "device": device_id}
    sql = _ROLLUP.format(device="" if device_id is None else " AND device_id = %(device)s")
    rows = await fetch(db, sql, params)
    buckets = [_figures(row, width) for row in rows if row[0] is not None]
    total_rows = [row for row in rows if row[0] is None]
    window_s = (end - start).total_seconds()
    total = _figures(total_rows[0], window_s) if total_rows else _figures((None, 0, 0, 0, 0, 0, 0), window_s)
    total.pop("start")
    return {"from": store.iso(start), "to": store.iso(end), "bucket": bucket, "device_id": device_id,
            "buckets": buckets, "total": total}  # fmt: skip


def _figures(row: tuple[Any, ...], span_s: float) -> dict[str, Any]:
    b, ride, idle, in_service, maintenance, n_service, n_maintenance = row
    ride, idle, in_service, maintenance = (float(v or 0.0) for v in (ride, idle, in_service, maintenance))
    return {
        "start": None if b is None else store.iso(b),
        "utilization": ride / in_service if in_service > 0 else None,
        "ride_hours": ride / 3600,
        "idle_hours": idle / 3600,
        "in_service_hours": in_service / 3600,
        "maintenance_hours": maintenance / 3600,
        "vehicles_in_service": int(n_service or 0),  # with any in-service time in the span
        "vehicles_in_maintenance": int(n_maintenance or 0),
        "avg_vehicles_in_service": in_service / span_s,
        "avg_vehicles_riding": ride / span_s,
    }
