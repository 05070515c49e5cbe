"""Liveness, readiness and pipeline counters: public, for load balancers, operators and the demo."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import PUBLIC_ROUTE
from api.deps import ConfigDep, RedisDep
from geofence.store import connect
from kernel import keys

router = APIRouter(tags=["health"], dependencies=[PUBLIC_ROUTE])


@router.get("/healthz")
async def healthz(client: RedisDep) -> dict[str, object]:
    """The process answers; with the pipeline's counters from Redis."""

    def read() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(keys.COUNTERS).items()}

    counters = await run_in_threadpool(read)
    return {"status": "ok", "counters": counters}


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
