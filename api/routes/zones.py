"""Zones: GeoJSON in, validated and normalised by the geofence core, stored for the worker to pick up.

A zone the core refuses (self-intersecting ring, wrong geometry type, open ring, slow zone without a
limit, unknown kind, too many vertices) is a 422 with the core's message, which names the zone and
the place. Changes take effect in the running geofence worker within a second (it polls the zone
catalog version). Viewers read zones; operators create, replace and delete them, each change audited
with the zone before and after.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import VIEWER, OperatorKey, route_of
from api.db import SyncPoolDep
from api.schemas import ZoneCollection, ZoneFeature, body_of
from geofence import store
from geofence.errors import ZoneError
from geofence.zones import Zone, parse_zone

router = APIRouter(prefix="/v1/zones", tags=["zones"])

GEOJSON = "application/geo+json"
ZONE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ZoneBase(BaseModel):
    name: str = Field(default="", max_length=200)
    kind: str = Field(description="service_area, no_parking, slow or no_ride", max_length=64)
    speed_limit_kmh: float | None = Field(default=None, description="required for slow zones")
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, or a Feature holding one")


class ZoneCreate(ZoneBase):
    id: str | None = Field(default=None, pattern=ZONE_ID)


class ZoneUpdate(ZoneBase):
    pass


def _zone(zone_id: str, body: ZoneBase) -> Zone:
    try:
        return parse_zone(
            body.geometry, id=zone_id, kind=body.kind, speed_limit_kmh=body.speed_limit_kmh, name=body.name
        )
    except ZoneError as exc:
        raise HTTPException(422, str(exc)) from None


def _geojson(obj: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status_code, media_type=GEOJSON)


@router.post("", status_code=201, response_model=None, responses=body_of(ZoneFeature, GEOJSON, 201))
async def create_zone(actor: OperatorKey, body: ZoneCreate, pool: SyncPoolDep, request: Request) -> Response:
    zone = _zone(body.id or f"zone-{secrets.token_hex(6)}", body)

    def insert() -> store.StoredZone:
        with pool.connection() as conn:
            stored = store.insert_zone(conn, zone)
            keystore.record(conn, actor, "zone.create", zone.id, None, stored.feature(), route_of(request))
            return stored

    try:
        stored = await run_in_threadpool(insert)
    except store.ZoneExists as exc:
        raise HTTPException(409, str(exc)) from None
    return _geojson(stored.feature(), 201)


@router.get("", dependencies=[VIEWER], response_model=None, responses=body_of(ZoneCollection, GEOJSON))
async def list_zones(pool: SyncPoolDep) -> Response:
    """All zones as an RFC 7946 FeatureCollection."""

    def read() -> list[store.StoredZone]:
        with pool.connection() as conn:
            return store.list_zones(conn)

    zones = await run_in_threadpool(read)
    return _geojson({"type": "FeatureCollection", "features": [z.feature() for z in zones]})


@router.get("/{zone_id}", dependencies=[VIEWER], response_model=None, responses=body_of(ZoneFeature, GEOJSON))
async def get_zone(zone_id: str, pool: SyncPoolDep) -> Response:
    def read() -> store.StoredZone | None:
        with pool.connection() as conn:
            return store.get_zone(conn, zone_id)

    stored = await run_in_threadpool(read)
    if stored is None:
        raise HTTPException(404, f"no zone {zone_id!r}")
    return _geojson(stored.feature())


@router.put("/{zone_id}", response_model=None, responses=body_of(ZoneFeature, GEOJSON))
async def replace_zone(
    actor: OperatorKey, zone_id: str, body: ZoneUpdate, pool: SyncPoolDep, request: Request
) -> Response:
    """Replace a zone's kind, name, limit and geometry (create zones with POST)."""
    zone = _zone(zone_id, body)

    def update() -> store.StoredZone | None:
        with pool.connection() as conn:
            before = store.get_zone(conn, zone_id)
            stored = store.replace_zone(conn, zone)
            if stored is not None:
                old = before.feature() if before else None
                keystore.record(conn, actor, "zone.replace", zone_id, old, stored.feature(), route_of(request))
            return stored

    stored = await run_in_threadpool(update)
    if stored is None:
        raise HTTPException(404, f"no zone {zone_id!r} (create it with POST /v1/zones)")
    return _geojson(stored.feature())


@router.delete("/{zone_id}", status_code=204)
async def delete_zone(actor: OperatorKey, zone_id: str, pool: SyncPoolDep, request: Request) -> None:
    def delete() -> bool:
        with pool.connection() as conn:
            before = store.get_zone(conn, zone_id)
            if before is None or not store.delete_zone(conn, zone_id):
                return False
            keystore.record(conn, actor, "zone.delete", zone_id, before.feature(), None, route_of(request))
            return True

    if not await run_in_threadpool(delete):
        raise HTTPException(404, f"no zone {zone_id!r}")
