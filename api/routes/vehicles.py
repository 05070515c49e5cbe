"""The live fleet, read from Redis (never from the database, so the map stays live while it is slow)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, HTTPException, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import VIEWER
from api.deps import LiveDep
from api.geojson import feature_collection, vehicle_feature

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"], dependencies=[VIEWER])

GEOJSON = "application/geo+json"


@router.get("")
async def list_vehicles(live: LiveDep) -> Response:
    """All vehicles with a known position, as an RFC 7946 FeatureCollection."""
    states = await run_in_threadpool(live.all)
    return Response(orjson.dumps(feature_collection(states)), media_type=GEOJSON)


@router.get("/{device_id}")
async def get_vehicle(device_id: str, live: LiveDep) -> Response:
    state = await run_in_threadpool(live.get, device_id)
    feature = vehicle_feature(state) if state else None
    if feature is None:
        raise HTTPException(404, f"no known position for vehicle {device_id!r}")
    return Response(orjson.dumps(feature), media_type=GEOJSON)
