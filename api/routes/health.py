"""Liveness, readiness and pipeline counters: public, for load balancers, operators and the demo."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import PUBLIC_ROUTE
from api.deps import ConfigDep, RedisDep
from geofence.store import connect
from kernel import keys

router = APIRouter(tags=["health"], dependencies=[PUBLIC_ROUTE])


@router.get("/healthz")
async def healthz(client: RedisDep) -> dict[str, object]:
    """The process answers; with the pipeline's counters from Redis and the geofence stage's backlog."""

    def read() -> tuple[dict[str, int], dict[str, object]]:
        counters = {_text(k): int(v) for k, v in client.hgetall(keys.COUNTERS).items()}
        try:
            groups = client.xinfo_groups(keys.POSITIONS_STREAM)
        except redis.ResponseError:  # no stream yet
            groups = []
        group = next((g for g in groups if _text(g["name"]) == "geofence"), None)
        return counters, positions_health(counters, group)

    counters, positions = await run_in_threadpool(read)
    return {"status": "ok", "counters": counters, "positions": positions}


def positions_health(counters: dict[str, int], group: dict[str, Any] | None) -> dict[str, object]:
    """The hand-off to the geofence stage: its backlog (entries not yet delivered, `lag`, and
    delivered but not acknowledged, `pending`; None without a geofence worker) and what the stream's
    bound dropped before the stage processed it. `overflowed` is the one flag to alert on."""
    dropped = counters.get("positions_dropped", 0)
    return {
        "geofence_lag_entries": None if group is None else group.get("lag"),
        "geofence_pending_entries": None if group is None else group.get("pending"),
        "dropped_records": dropped,
        "dropped_entries": counters.get("positions_dropped_entries", 0),
        "overflowed": dropped > 0,
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@router.get("/readyz")
async def readyz(client: RedisDep, config: ConfigDep, response: Response) -> dict[str, object]:
    """Ready when both the database and Redis answer; 503 (naming what does not) otherwise."""

    def probe() -> dict[str, str]:
        checks = {}
        try:
            with connect(config.database_url, "fleet api readyz") as conn:
                conn.execute("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            client.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        return checks

    checks = await run_in_threadpool(probe)
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = 503
    return {"status": "ready" if ready else "not ready", "checks": checks}
