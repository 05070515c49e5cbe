"""Activity per zone and utilization per device, over a window (the fleet-wide figures are in
`utilization.py`, the event and trip lists in `events.py` and `utilization.py`).

A zone's activity per bucket: its events by kind, and the trips that started or ended inside it
(a trip's end points against the zone's polygons; candidates found by the zone's bounding box in
SQL). Per device: the same figures as the fleet's utilization total, one row per device, most
ride time first.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
import shapely
from fastapi import APIRouter, HTTPException, Query, Request
from shapely.geometry import shape

from api.auth import VIEWER
from api.db import DbDep, fetch
from api.fleetview import in_zone
from api.inputs import FleetTime
from api.routes.utilization import MAX_BUCKETS, _figures
from api.schemas import DeviceUtilizationPage, ZoneActivity
from api.window import window

router = APIRouter(prefix="/v1", tags=["utilization"], dependencies=[VIEWER])

_WIDTH = {"hour": 3600, "day": 86400}
_EVENTS = (
    "SELECT time_bucket(%(width)s, time) AS b, kind, count(*) FROM zone_events WHERE zone_id = %(zone)s"
    " AND time >= %(from)s AND time < %(to)s GROUP BY b, kind"
)
_TRIPS = (
    "SELECT start_time, start_lon, start_lat, end_time, end_lon, end_lat, ongoing FROM trips"
    " WHERE start_time < %(to)s AND end_time >= %(from)s AND ("
    " (start_lon BETWEEN %(x0)s AND %(x1)s AND start_lat BETWEEN %(y0)s AND %(y1)s)"
    " OR (end_lon BETWEEN %(x0)s AND %(x1)s AND end_lat BETWEEN %(y0)s AND %(y1)s))"
)
_PER_DEVICE = (
    "SELECT device_id, sum(ride_s), sum(idle_s), sum(in_service_s), sum(maintenance_s),"
    " (sum(in_service_s) > 0)::int, (sum(maintenance_s) > 0)::int FROM utilization_hourly"
    " WHERE bucket >= time_bucket('1 hour', %(from)s::timestamptz) AND bucket < %(to)s{device}"
    " GROUP BY device_id ORDER BY sum(ride_s) DESC, device_id LIMIT %(limit)s"
)


def _window(start: datetime | None, end: datetime | None, width: int) -> tuple[datetime, datetime]:
    start, end = window(start, end, timedelta(days=1))
    if (end - start).total_seconds() / width > MAX_BUCKETS:
        raise HTTPException(422, f"at most {MAX_BUCKETS} buckets per request: narrow the window or use bucket=day")
    return start, end


def _bucket_of(t: datetime, width: int) -> datetime:
    epoch = t.timestamp()
    return datetime.fromtimestamp(epoch - epoch % width, UTC)


@router.get("/zones/{zone_id}/activity", response_model=ZoneActivity)
async def zone_activity(
    zone_id: str,
    request: Request,
    db: DbDep,
    start: Annotated[FleetTime | None, Query(alias="from")] = None,
    end: Annotated[FleetTime | None, Query(alias="to")] = None,
    bucket: Literal["hour", "day"] = "hour",
) -> dict[str, Any]:
    """Events by kind and trips started or ended in the zone, per UTC hour or day (default: the last
    24 hours), and how many live vehicles stand in it now."""
    width = _WIDTH[bucket]
    start, end = _window(start, end, width)
    zone = await fetch(db, "SELECT geometry FROM zones WHERE id = %s", (zone_id,))
    if not zone:
        raise HTTPException(404, f"no zone {zone_id!r}")
    polygon = shape(zone[0][0])
    shapely.prepare(polygon)
    x0, y0, x1, y1 = polygon.bounds
    params = {"width": timedelta(seconds=width), "zone": zone_id, "from": start, "to": end,
              "x0": x0, "y0": y0, "x1": x1, "y1": y1}  # fmt: skip
    counts: dict[datetime, Counter[str]] = {}
    for b, kind, n in await fetch(db, _EVENTS, params):
        counts.setdefault(b, Counter())[kind] += n
    trips = await fetch(db, _TRIPS, params)
    if trips:
        starts = shapely.intersects_xy(polygon, np.array([t[1] for t in trips]), np.array([t[2] for t in trips]))
        ends = shapely.intersects_xy(polygon, np.array([t[4] for t in trips]), np.array([t[5] for t in trips]))
        for (t0, _, _, t1, _, _, ongoing), s, e in zip(trips, starts, ends, strict=True):
            if s and start <= t0 < end:
                counts.setdefault(_bucket_of(t0, width), Counter())["trips_started"] += 1
            if e and not ongoing and start <= t1 < end:
                counts.setdefault(_bucket_of(t1, width), Counter())["trips_ended"] += 1
    kinds = ("enter", "exit", "cross", "dwell", "violation", "trips_started", "trips_ended")
    buckets = [{"start": b, **{k: counts[b][k] for k in kinds}} for b in sorted(counts)]
    snapshot = await request.app.state.fleet.snapshot()
    inside = int(in_zone(snapshot, zone[0][0]).sum()) if len(snapshot) else 0
    return {"zone_id": zone_id, "from": start, "to": end, "bucket": bucket, "buckets": buckets,
            "vehicles_inside": inside}  # fmt: skip


@router.get("/utilization/devices", response_model=DeviceUtilizationPage)
async def device_utilization(
    db: DbDep,
    start: Annotated[FleetTime | None, Query(alias="from")] = None,
    end: Annotated[FleetTime | None, Query(alias="to")] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Utilization per device over the window (default: the last 24 hours), most ride time first."""
    start, end = _window(start, end, 3600)
    params = {"from": start, "to": end, "device": device_id, "limit": limit}
    sql = _PER_DEVICE.format(device="" if device_id is None else " AND device_id = %(device)s")
    span = (end - start).total_seconds()
    devices = []
    for row in await fetch(db, sql, params):
        figures = _figures((None, *row[1:]), span)
        figures.pop("start")
        devices.append({"device_id": row[0], **figures})
    return {"from": start, "to": end, "devices": devices}
