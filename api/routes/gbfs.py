"""GBFS 3.0, public: the feeds trip planners and cities read without a key (`/gbfs/3.0/...`).

`vehicle_status` is built from the API's live snapshot (at most `api.livefleet.STALE_S` behind Redis)
and cached for one snapshot; it lists vehicles heard from in the last five minutes that are not in
an active rental, each under its rotating public id (`api.mobility.rotate`, stored in the table
`gbfs_vehicle_ids`). A vehicle seen in a rental loses its id at once, so it comes back under a new
one even when its trip was never stored. The documents are those of `api.mobility`.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api import mobility
from api.auth import PUBLIC_ROUTE
from api.db import DbDep
from api.fleetview import Snapshot
from api.livefleet import LiveFleet

router = APIRouter(prefix="/gbfs/3.0", tags=["GBFS 3.0 (public)"], dependencies=[PUBLIC_ROUTE])

_TRIPS = "SELECT device_id, max(start_time) FILTER (WHERE NOT ongoing), bool_or(ongoing) FROM trips GROUP BY device_id"
_UPSERT = (
    "INSERT INTO gbfs_vehicle_ids (device_id, public_id, after_trip) VALUES (%s, %s, %s)"
    " ON CONFLICT (device_id) DO UPDATE SET public_id = EXCLUDED.public_id, after_trip = EXCLUDED.after_trip,"
    " assigned_at = now()"
    " WHERE gbfs_vehicle_ids.after_trip IS DISTINCT FROM EXCLUDED.after_trip"
    " AND (gbfs_vehicle_ids.after_trip IS NULL OR gbfs_vehicle_ids.after_trip < EXCLUDED.after_trip)"
)


class GbfsDocument(BaseModel):
    """Every GBFS file: `data` is the file's own (see the GBFS 3.0 reference)."""

    last_updated: datetime
    ttl: int
    version: Literal["3.0"]
    data: dict[str, Any]


def _json(doc: dict[str, Any] | bytes) -> Response:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return Response(body, media_type="application/json")


def _info(request: Request) -> mobility.SystemInfo:
    return request.app.state.config.system


_OK: dict[int | str, dict[str, Any]] = {200: {"model": GbfsDocument}}


@router.get("/gbfs.json", response_model=None, responses=_OK)
async def gbfs(request: Request) -> Response:
    """Auto-discovery: the URL of every feed."""
    base = str(request.url_for("gbfs")).rsplit("/", 1)[0]
    return _json(mobility.discovery(base, time.time()))


@router.get("/system_information.json", response_model=None, responses=_OK)
async def system_information(request: Request) -> Response:
    return _json(mobility.system_information(_info(request), time.time()))


@router.get("/vehicle_types.json", response_model=None, responses=_OK)
async def vehicle_types(request: Request) -> Response:
    return _json(mobility.vehicle_types(_info(request), time.time()))


@router.get("/geofencing_zones.json", response_model=None, responses=_OK)
async def geofencing_zones(request: Request, db: DbDep) -> Response:
    async with db.connection() as conn:
        cur = await conn.execute("SELECT id, kind, name, speed_limit_kmh, geometry FROM zones ORDER BY id")
        rows = await cur.fetchall()
    zones = [{"id": i, "kind": k, "name": n, "speed_limit_kmh": s, "geometry": g} for i, k, n, s, g in rows]
    return _json(mobility.geofencing_zones(zones, _info(request), time.time()))


@router.get("/vehicle_status.json", response_model=None, responses=_OK)
async def vehicle_status(request: Request, db: DbDep) -> Response:
    """Parked vehicles reported in the last five minutes, under ids that change after every trip."""
    fleet: LiveFleet = request.app.state.fleet
    snapshot = await fleet.snapshot()
    cache = request.app.state.gbfs_cache
    if cache is not None and cache[0] == snapshot.taken_at:
        return _json(cache[1])
    body = orjson.dumps(await _vehicle_status(snapshot, db))
    request.app.state.gbfs_cache = (snapshot.taken_at, body)
    return _json(body)


async def _vehicle_status(snapshot: Snapshot, db: AsyncConnectionPool) -> dict[str, Any]:
    now = time.time()
    states = {}
    for device_id, entry in snapshot.entries.items():
        state = orjson.loads(entry.raw)
        if mobility.is_fresh(state, now):
            states[device_id] = (state, entry.maintenance)
    async with db.connection() as conn:
        trips = await (await conn.execute(_TRIPS)).fetchall()
        last_trip = {d: t for d, t, _ in trips if t is not None}
        ongoing = {d for d, _, o in trips if o}
        renting = {d for d, (state, _) in states.items() if mobility.in_rental(state, d in ongoing)}
        listed = [d for d in states if d not in renting]
        if renting:  # a vehicle seen in a rental comes back under a new id, even if no trip was stored
            await conn.execute("DELETE FROM gbfs_vehicle_ids WHERE device_id = ANY(%s)", (list(renting),))
        held = await _public_ids(conn)
        changed = mobility.rotate(held, last_trip, listed, lambda: secrets.token_urlsafe(12))
        if changed:
            async with conn.cursor() as cur:
                await cur.executemany(_UPSERT, [(d, p.public_id, p.after_trip) for d, p in changed.items()])
            held = await _public_ids(conn)
    vehicles = []
    for device_id in listed:
        state, maintenance = states[device_id]
        vehicle = mobility.gbfs_vehicle(held[device_id].public_id, state, maintenance)
        if vehicle is not None:
            vehicles.append(vehicle)
    vehicles.sort(key=lambda v: v["vehicle_id"])  # no order that would give the device ids away
    return mobility.envelope({"vehicles": vehicles}, snapshot.taken_at, mobility.VEHICLE_STATUS_TTL_S)


async def _public_ids(conn: Any) -> dict[str, mobility.PublicId]:
    rows = await (await conn.execute("SELECT device_id, public_id, after_trip FROM gbfs_vehicle_ids")).fetchall()
    return {d: mobility.PublicId(p, a) for d, p, a in rows}
