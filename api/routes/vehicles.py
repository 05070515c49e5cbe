"""The live fleet, from the API's snapshot of Redis (never from the database, so the map stays live
while it is slow), and one vehicle's track from the telemetry history.

Filters combine (AND): a bounding box, states, battery below a level, inside a zone, online. Pages
are in vehicle id order; `next_cursor` is opaque and goes back as `cursor`.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel

from api import fleetview
from api.auth import VIEWER
from api.db import AsyncRedisDep, DbDep
from api.inputs import FleetTime
from api.livefleet import LiveFleet
from api.schemas import TrackFeature, VehicleCollection, VehicleFeature, body_of
from api.window import window
from geofence import store
from kernel import keys

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"], dependencies=[VIEWER])

GEOJSON = "application/geo+json"
MAX_PAGE = 100_000
_EVERYTHING = fleetview.VehicleFilter()
_NUMBER = r"-?[0-9]{1,3}(\.[0-9]{1,12})?"
BBOX = rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$"
TRACK_DEFAULT = timedelta(hours=1)
TRACK_MAX_WINDOW = timedelta(days=31)
TRACK_MAX_POINTS = 2_000  # a longer window is downsampled with time_bucket to about this many
_RAW_TRACK = (
    "SELECT t.time, t.lon, t.lat FROM telemetry t WHERE t.device_key = %(key)s"
    " AND t.time >= %(from)s AND t.time < %(to)s AND t.lon IS NOT NULL ORDER BY t.time LIMIT %(limit)s"
)
_SERVICE = "SELECT status FROM device_service WHERE device_id = %s AND time <= now() ORDER BY time DESC LIMIT 1"
_BUCKETED_TRACK = (
    "SELECT time_bucket(%(width)s, t.time) AS b, last(t.lon, t.time), last(t.lat, t.time) FROM telemetry t"
    " WHERE t.device_key = %(key)s AND t.time >= %(from)s AND t.time < %(to)s AND t.lon IS NOT NULL"
    " GROUP BY b ORDER BY b"
)


def _geojson(body: bytes) -> Response:
    return Response(body, media_type=GEOJSON)


def _ok(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return body_of(model, GEOJSON)


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(422, "bbox is min_lon,min_lat,max_lon,max_lat (four numbers)") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
        raise HTTPException(422, "bbox needs finite numbers with min_lon <= max_lon and min_lat <= max_lat")
    return x0, y0, x1, y1


@router.get("", response_model=None, responses={**_ok(VehicleCollection), 404: {"description": "unknown zone"}})
async def list_vehicles(
    request: Request,
    db: DbDep,
    bbox: Annotated[str | None, Query(description="min_lon,min_lat,max_lon,max_lat", pattern=BBOX)] = None,
    state: Annotated[list[fleetview.VehicleState] | None, Query(description="any of these states")] = None,
    battery_below: Annotated[float | None, Query(ge=0, le=100, description="battery_pct below this")] = None,
    zone: Annotated[str | None, Query(max_length=64, description="inside this zone (its id)")] = None,
    online: bool | None = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> Response:
    """Vehicles with a known position, as an RFC 7946 FeatureCollection, in id order."""
    wanted = fleetview.VehicleFilter(_bbox(bbox), frozenset(state or ()), battery_below, online)
    try:
        after = fleetview.decode_cursor(cursor) if cursor is not None else None
    except fleetview.BadCursor as exc:
        raise HTTPException(422, f"cursor: {exc}") from None
    fleet: LiveFleet = request.app.state.fleet
    snapshot = await fleet.snapshot()
    if wanted == _EVERYTHING and zone is None and after is None and limit >= len(snapshot):
        whole = fleet.whole(snapshot)
        if whole is not None:
            return _geojson(whole)
    keep = fleetview.mask(snapshot, wanted)  # also for a cached answer: cheap, and it checks the zone
    if zone is not None:
        async with db.connection() as conn:
            row = await (await conn.execute("SELECT geometry FROM zones WHERE id = %s", (zone,))).fetchone()
        if row is None:
            raise HTTPException(404, f"no zone {zone!r}")
        keep &= fleetview.in_zone(snapshot, row[0])

    def make() -> bytes:
        indexes, next_cursor = fleetview.page(snapshot, keep, after, limit)
        return fleetview.collection(snapshot, indexes, next_cursor)

    return _geojson(fleet.cached(snapshot, (wanted, zone, after, limit), make))


@router.get("/{device_id}", response_model=None, responses=_ok(VehicleFeature))
async def get_vehicle(device_id: str, db: DbDep, client: AsyncRedisDep) -> Response:
    """One vehicle, read from Redis at once (not from the snapshot the listing uses)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hget(keys.VEHICLES, device_id)
        pipe.hget(keys.ONLINE, device_id)
        raw, online = await pipe.execute()
    entry = None
    if raw is not None:
        async with db.connection() as conn:
            row = await (await conn.execute(_SERVICE, (device_id,))).fetchone()
        entry = fleetview.build_entry(raw, online == b"1", row is not None and row[0] != "in_service")
    if entry is None:
        raise HTTPException(404, f"no known position for vehicle {device_id!r}")
    return _geojson(entry.feature)


@router.get("/{device_id}/track", response_model=None, responses=_ok(TrackFeature))
async def get_track(
    device_id: str,
    db: DbDep,
    start: Annotated[FleetTime | None, Query(alias="from")] = None,
    end: Annotated[FleetTime | None, Query(alias="to")] = None,
) -> Response:
    """The vehicle's positions over [from, to) (default: the last hour) as a GeoJSON LineString.
    Over a window with more than about 2,000 positions, one position per `time_bucket` (its last)."""
    start, end = window(start, end, TRACK_DEFAULT)
    if end - start > TRACK_MAX_WINDOW:
        raise HTTPException(422, f"a track spans at most {TRACK_MAX_WINDOW.days} days")
    params: dict[str, Any] = {"from": start, "to": end, "limit": TRACK_MAX_POINTS + 1}
    async with db.connection() as conn:
        key = await (await conn.execute("SELECT key FROM device_keys WHERE id = %s", (device_id,))).fetchone()
        if key is None:
            raise HTTPException(404, f"no stored history for vehicle {device_id!r}")
        params["key"] = key[0]
        rows = await (await conn.execute(_RAW_TRACK, params)).fetchall()
        width = None
        if len(rows) > TRACK_MAX_POINTS:
            width = math.ceil((end - start).total_seconds() / TRACK_MAX_POINTS)
            params["width"] = timedelta(seconds=width)
            rows = await (await conn.execute(_BUCKETED_TRACK, params)).fetchall()
    coordinates = [[round(x, 7), round(y, 7)] for _, x, y in rows]
    feature = {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coordinates} if len(coordinates) >= 2 else None,
        "properties": {"device_id": device_id, "from": store.iso(start), "to": store.iso(end),
                       "points": len(coordinates), "bucket_s": width, "times": [store.iso(t) for t, _, _ in rows]},
    }  # fmt: skip
    return _geojson(orjson.dumps(feature))
