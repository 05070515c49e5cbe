"""The operator map page, `/map`, and the few calls only it makes.

The page and its scripts are public (they hold no data and no secret): every data call from the page
carries the operator's API key, entered once and kept in the browser. The libraries it loads are
vendored under `api/static/vendor` (`refresh.sh` there fetches them again), so the page works on a
closed network. `GET /map/config.json` tells the page where base-map tiles come from, if anywhere
(`FLEET_MAP_TILES_URL`); without tiles it draws zones and vehicles on a plain background.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from api.auth import PUBLIC_ROUTE, ViewerKey, api_routes
from api.deps import ConfigDep
from geofence import store

router = APIRouter(tags=["map"])

# Where a vehicle's subscription may be read, in order of preference (the subscriptions feature names
# its route; the page takes the first that this server serves)
SUBSCRIPTION_ROUTES = ("/v1/devices/{device_id}/subscription", "/v1/vehicles/{device_id}/subscription")
MAX_TRACK_MINUTES = 24 * 60
TRACK_POINTS = 2000  # a longer window is thinned to about this many points (every n-th report)
_PAGE = resources.files("api") / "static" / "map.html"


class MapConfig(BaseModel):
    tiles_url: str | None
    tiles_attribution: str


class Me(BaseModel):
    key_id: str | None
    name: str
    role: str | None


@router.get("/map", response_class=HTMLResponse, dependencies=[PUBLIC_ROUTE], include_in_schema=False)
async def map_page() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/map/config.json", dependencies=[PUBLIC_ROUTE])
async def map_config(config: ConfigDep) -> MapConfig:
    """Base-map tiles for the page: a `{z}/{x}/{y}` URL template, or none (plain background)."""
    return MapConfig(tiles_url=config.map_tiles_url, tiles_attribution=config.map_tiles_attribution)


@router.get("/v1/me")
async def whoami(actor: ViewerKey) -> Me:
    """The key's own name and role: the page shows lock buttons only to operators."""
    return Me(key_id=actor.key_id, name=actor.name, role=actor.role and str(actor.role))


@router.get("/v1/map/track/{device_id}")
async def track(
    device_id: str,
    _actor: ViewerKey,
    config: ConfigDep,
    minutes: Annotated[int, Query(ge=1, le=MAX_TRACK_MINUTES)] = 60,
) -> dict[str, Any]:
    """A vehicle's positions over the last `minutes` as a GeoJSON LineString Feature (oldest first)."""
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    sql = (
        "SELECT lon, lat, time FROM (SELECT t.lon, t.lat, t.time, row_number() OVER (ORDER BY t.time) AS n,"
        " count(*) OVER () AS total FROM telemetry t JOIN device_keys k ON k.key = t.device_key"
        " WHERE k.id = %(id)s AND t.time >= %(since)s AND t.lon IS NOT NULL) p"
        " WHERE (n - 1) %% greatest(1, ceil(total::float / %(points)s)::int) = 0 OR n = total ORDER BY time"
    )

    def read() -> list[tuple[float, float, datetime]]:
        with store.connect(config.database_url) as conn:
            return conn.execute(sql, {"id": device_id, "since": since, "points": TRACK_POINTS}).fetchall()

    rows = await run_in_threadpool(read)
    # RFC 7946: a LineString has two positions or more; fewer is a Feature without geometry (not a
    # 404, which a browser would log as an error for a vehicle that merely stood still)
    geometry = {"type": "LineString", "coordinates": [[round(x, 7), round(y, 7)] for x, y, _ in rows]}
    return {
        "type": "Feature",
        "id": device_id,
        "geometry": geometry if len(rows) >= 2 else None,
        "properties": {"from": store.iso(rows[0][2]) if rows else None, "to": store.iso(rows[-1][2]) if rows else None,
                       "points": len(rows)},
    }  # fmt: skip


@router.get("/v1/map/features")
async def features(_actor: ViewerKey, request: Request) -> dict[str, str | None]:
    """Optional routes the page may use, by path template: `subscription_route` is the route of a
    vehicle's subscription when this server has one (the page's subscription panel stays hidden
    otherwise, without a request that would only 404)."""
    paths = {route.path for route in api_routes(request.app.routes)}
    return {"subscription_route": next((p for p in SUBSCRIPTION_ROUTES if p in paths), None)}


@router.get("/v1/map/maintenance")
async def in_maintenance(_actor: ViewerKey, config: ConfigDep) -> list[str]:
    """Ids of the vehicles whose current service status is `maintenance` (a colour of their own)."""
    sql = (
        "SELECT device_id FROM (SELECT DISTINCT ON (device_id) device_id, status FROM device_service"
        " WHERE time <= now() ORDER BY device_id, time DESC) s WHERE status = 'maintenance' ORDER BY 1"
    )

    def read() -> list[str]:
        with store.connect(config.database_url) as conn:
            return [row[0] for row in conn.execute(sql)]

    return await run_in_threadpool(read)
