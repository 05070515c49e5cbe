"""Zone events (enter, exit, cross, dwell, violation), newest first. Live ones go out on the Redis
channel `fleet:events`; this is the history, from the `zone_events` hypertable."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.auth import VIEWER
from api.db import DbDep, fetch
from api.inputs import FleetTime
from api.schemas import ZoneEvent
from geofence import store

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[VIEWER])

EventKindParam = Literal["enter", "exit", "cross", "dwell", "violation"]


@router.get("")
async def list_events(
    db: DbDep,
    device_id: str | None = None,
    zone_id: str | None = None,
    kind: EventKindParam | None = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[ZoneEvent]:
    """Per device (`device_id`), per zone (`zone_id`), of a kind, over [since, until)."""
    where, params = ["true"], {"limit": limit}
    for column, value in (("device_id", device_id), ("zone_id", zone_id), ("kind", kind)):
        if value is not None:
            where.append(f"{column} = %({column})s")
            params[column] = value
    if since is not None:
        where.append("time >= %(since)s")
        params["since"] = store.utc(since)
    if until is not None:
        where.append("time < %(until)s")
        params["until"] = store.utc(until)
    sql = (
        "SELECT time, device_id, zone_id, kind, violation, lon, lat, detail FROM zone_events"
        f" WHERE {' AND '.join(where)} ORDER BY time DESC, device_id, zone_id, kind LIMIT %(limit)s"
    )
    rows = await fetch(db, sql, params)
    return [
        ZoneEvent(**{"time": store.iso(t), "device_id": d, "zone_id": z, "kind": k, "violation": v, "lon": x, "lat": y,
         "detail": detail})
        for t, d, z, k, v, x, y, detail in rows
    ]  # fmt: skip
