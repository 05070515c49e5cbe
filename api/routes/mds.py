"""MDS 2.0 Provider API, for the city, behind a viewer key: `/mds/2.0/vehicles` and `/telemetry`.

`vehicles` lists registered devices (paged by `links.next`); `telemetry` the stored reports of one
UTC hour (`telemetry_time=YYYY-MM-DDTHH`), each with the MDS id of the trip it lies in. MDS 2.0 gives
telemetry no paging; an hour of a large fleet is millions of reports, so this one pages it too,
with the same `links.next` as `vehicles` (at most `TELEMETRY_PAGE` per page).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from api import mobility
from api.auth import VIEWER
from api.db import DbDep, fetch
from api.schemas import body_of

router = APIRouter(prefix="/mds/2.0", tags=["MDS 2.0 provider"], dependencies=[VIEWER])

MDS_VERSION = "2.0.0"
MEDIA_TYPE = "application/vnd.mds+json;version=2.0"
VEHICLES_PAGE = 1_000
TELEMETRY_PAGE = 10_000
VEHICLES_TTL_MS = 60_000
_HOUR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})$")
_TELEMETRY = (
    "SELECT t.device_id, t.time, t.lon, t.lat, t.altitude_m, t.heading_deg, t.accuracy_m, t.satellites,"
    " t.speed_kmh, t.battery_pct, tr.start_time"
    " FROM telemetry t LEFT JOIN LATERAL (SELECT start_time FROM trips WHERE trips.device_id = t.device_id"
    " AND trips.start_time <= t.time AND trips.end_time >= t.time ORDER BY start_time DESC LIMIT 1) tr ON true"
    " WHERE t.time >= %(from)s AND t.time < %(to)s AND t.lon IS NOT NULL"
    " AND (t.time, t.device_id) > (%(after_t)s, %(after_d)s)"
    " ORDER BY t.time, t.device_id LIMIT %(limit)s"
)


class Links(BaseModel):
    next: str | None = Field(description="URL of the next page; null on the last")


class MdsVehicles(BaseModel):
    version: str
    last_updated: int = Field(description="milliseconds since the epoch")
    ttl: int = Field(description="milliseconds")
    links: Links
    vehicles: list[dict[str, Any]]


class MdsTelemetry(BaseModel):
    version: str
    links: Links
    telemetry: list[dict[str, Any]]


def _respond(doc: dict[str, Any]) -> Response:
    return Response(orjson.dumps(doc), media_type=MEDIA_TYPE)


def _cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode()


def _uncursor(text: str) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text))
    except (binascii.Error, ValueError):
        values = None
    if not isinstance(values, list):
        raise HTTPException(422, "cursor: not a cursor this API gave out")
    return values


def _next(request: Request, cursor: str | None) -> str | None:
    return None if cursor is None else str(request.url.include_query_params(cursor=cursor))


Cursor = Annotated[str | None, Query(max_length=400)]
_ok = body_of(MdsVehicles, MEDIA_TYPE)


@router.get("/vehicles", response_model=None, responses=_ok)
async def vehicles(request: Request, db: DbDep, cursor: Cursor = None) -> Response:
    after = ""
    if cursor is not None:
        values = _uncursor(cursor)
        if len(values) != 1 or not isinstance(values[0], str):
            raise HTTPException(422, "cursor: not a cursor this API gave out")
        after = values[0]
    rows = await fetch(db, "SELECT id FROM devices WHERE id > %s ORDER BY id LIMIT %s", (after, VEHICLES_PAGE + 1))
    more, rows = len(rows) > VEHICLES_PAGE, rows[:VEHICLES_PAGE]
    info = request.app.state.config.system
    return _respond({
        "version": MDS_VERSION, "last_updated": mobility.millis(time.time()), "ttl": VEHICLES_TTL_MS,
        "links": {"next": _next(request, _cursor(rows[-1][0]) if more else None)},
        "vehicles": [mobility.mds_vehicle(info, d) for (d,) in rows],
    })  # fmt: skip


_NOT_AN_HOUR = {400: {"description": "telemetry_time is not a UTC hour (YYYY-MM-DDTHH)"}}


@router.get("/telemetry", response_model=None, responses={**body_of(MdsTelemetry, MEDIA_TYPE), **_NOT_AN_HOUR})
async def telemetry(
    request: Request,
    db: DbDep,
    telemetry_time: Annotated[str, Query(max_length=13, description="the UTC hour, YYYY-MM-DDTHH")],
    cursor: Cursor = None,
) -> Response:
    start = _hour(telemetry_time)
    after_t, after_d = start - timedelta(microseconds=1), ""
    if cursor is not None:
        values = _uncursor(cursor)
        try:
            after_t, after_d = datetime.fromisoformat(values[0]), str(values[1])
        except (IndexError, TypeError, ValueError):
            raise HTTPException(422, "cursor: not a cursor this API gave out") from None
    params = {"from": start, "to": start + timedelta(hours=1), "after_t": after_t, "after_d": after_d,
              "limit": TELEMETRY_PAGE + 1}  # fmt: skip
    rows = await fetch(db, _TELEMETRY, params)
    more, rows = len(rows) > TELEMETRY_PAGE, rows[:TELEMETRY_PAGE]
    info = request.app.state.config.system
    names = ("altitude_m", "heading_deg", "accuracy_m", "satellites", "speed_kmh", "battery_pct")
    records = [
        mobility.mds_telemetry(info, row[0], row[1], row[2], row[3], dict(zip(names, row[4:10], strict=True)), row[10])
        for row in rows
    ]
    last = rows[-1] if rows else None
    cursor_out = _cursor(last[1].isoformat(), last[0]) if more and last else None
    return _respond({"version": MDS_VERSION, "links": {"next": _next(request, cursor_out)}, "telemetry": records})


def _hour(text: str) -> datetime:
    match = _HOUR.match(text)
    try:
        if match is None:
            raise ValueError
        year, month, day, hour = (int(g) for g in match.groups())
        start = datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError:
        raise HTTPException(400, "telemetry_time must be a UTC hour, YYYY-MM-DDTHH") from None
    if not 2018 <= start.year < 2100:
        raise HTTPException(400, "telemetry_time must lie between 2018 and 2100")
    return start
