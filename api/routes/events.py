"""Zone events (enter, exit, cross, dwell, violation), newest first. Live ones go out on the Redis
channel `fleet:events`; this is the history, from the `zone_events` hypertable."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.auth import VIEWER
from api.deps import ConfigDep
from api.inputs import FleetTime
from geofence import store

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[VIEWER])

EventKindParam = Literal["enter", "exit", "cross", "dwell", "violation"]


@router.get("")
async def list_events(
    config: ConfigDep,
    device_id: str | None = None,
    zone_id: str | None = None,
    kind: EventKindParam | None = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
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

    def read() -> list[tuple[Any, ...]]:
        with store.connect(config.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    rows = await run_in_threadpool(read)
    return [
        {"time": store.iso(t), "device_id": d, "zone_id": z, "kind": k, "violation": v, "lon": x, "lat": y,
         "detail": detail}
        for t, d, z, k, v, x, y, detail in rows
    ]  # fmt: skip
