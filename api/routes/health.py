"""Liveness, readiness and pipeline counters: public, for load balancers, operators and the demo."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis
from fastapi import APIRouter, Response

from api.auth import PUBLIC_ROUTE
from api.db import AsyncRedisDep, DbDep
from api.deps import ConfigDep
from api.schemas import Health, Readiness, StageLag
from kernel import keys
from kernel.metrics import STAGES, group_lag
from kernel.settings import MqttTarget

router = APIRouter(tags=["health"], dependencies=[PUBLIC_ROUTE])

PROBE_TIMEOUT_S = 2.0
MAX_LAG = 100_000  # stream entries behind: past this a stage is not keeping up, and /readyz says so
# MQTT 3.1.1 CONNECT: clean session, keep-alive 10 s, empty client id, no credentials. Any CONNACK
# (even "not authorised") shows the broker is up and speaking MQTT.
_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 0])


@router.get("/healthz", response_model=Health)
async def healthz(client: AsyncRedisDep) -> dict[str, Any]:
    """The process answers; with the pipeline's counters from Redis and the geofence stage's backlog."""
    counters = {_text(k): int(v) for k, v in (await client.hgetall(keys.COUNTERS)).items()}
    try:
        groups = await client.xinfo_groups(keys.POSITIONS_STREAM)
    except redis.ResponseError:  # no stream yet
        groups = []
    group = next((g for g in groups if _text(g["name"]) == "geofence"), None)
    return {"status": "ok", "counters": counters, "positions": positions_health(counters, group)}


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


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(client: AsyncRedisDep, db: DbDep, config: ConfigDep, response: Response) -> dict[str, Any]:
    """Ready when the database, Redis and the broker answer and no stage lags more than `MAX_LAG`
    entries; 503, naming what does not, otherwise. A stage whose group does not exist yet (its
    service never ran) is reported with a null lag and does not count against readiness."""
    checks: dict[str, str] = {}
    database, redis_check, broker = await asyncio.gather(
        _database(db), _redis(client), _broker(config.mqtt_url), return_exceptions=False
    )
    checks["database"], checks["redis"] = database, redis_check
    if broker is not None:
        checks["broker"] = broker
    stages: dict[str, StageLag] = {}
    if redis_check == "ok":
        for stage, (stream, group) in STAGES.items():
            try:
                lag, pending = group_lag(await client.xinfo_groups(stream), group)
            except Exception:  # the stream does not exist yet: nothing to lag behind
                lag, pending = None, None
            stages[stage] = StageLag(stream=stream, group=group, lag=lag, pending=pending)
            if lag is not None and lag > MAX_LAG:
                checks[f"{stage} lag"] = f"behind by {lag} entries (more than {MAX_LAG})"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = 503
    return {"status": "ready" if ready else "not ready", "checks": checks, "stages": stages}


async def _database(db: Any) -> str:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S), db.connection() as conn:
            await conn.execute("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"


async def _redis(client: Any) -> str:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await client.ping()
        return "ok"
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"


async def _broker(url: str | None) -> str | None:
    """None when the API was not told where the broker is (no check then)."""
    if not url:
        return None
    try:
        target = MqttTarget.parse(url)
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                target.host, target.port, ssl=target.ssl_context(), server_hostname=target.host if target.tls else None
            )
            try:
                writer.write(_CONNECT)
                await writer.drain()
                answer = await reader.readexactly(4)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok" if answer[0] == 0x20 else "unavailable: not an MQTT broker"
