"""A device's service status (in_service, maintenance, inactive): what utilization counts it as.

Kept apart from `devices.py` (registration) because it belongs to fleet operations, not to broker
accounts. Setting a status recomputes the device's utilization rows from the change on, so how far
back a change may reach is bounded (`api.inputs.MAX_RECOMPUTE`): one call rewrites at most a month
of one device's hourly rows. Operators set statuses (audited); viewers read them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import VIEWER, OperatorKey, route_of
from api.db import SyncPoolDep
from api.inputs import FleetTime, recompute_problem
from api.schemas import ServiceHistory, ServiceStatusPublic
from geofence import store
from geofence.utilization import ServiceStatus

router = APIRouter(prefix="/v1/devices", tags=["devices"])


class ServiceUpdate(BaseModel):
    status: ServiceStatus
    since: FleetTime | None = Field(
        default=None, description="when the status began (default: now; at most 31 days ago)"
    )


@router.put("/{device_id}/service", response_model=ServiceStatusPublic)
async def set_service(
    actor: OperatorKey, device_id: str, body: ServiceUpdate, pool: SyncPoolDep, request: Request
) -> dict[str, Any]:
    if body.since is not None and (problem := recompute_problem(body.since, datetime.now(UTC))):
        raise HTTPException(422, problem)

    def write() -> datetime:
        with pool.connection() as conn:
            history = store.service_history(conn, device_id)
            since = body.since or datetime.now(UTC)
            store.set_service_status(conn, device_id, body.status, since, time.time())
            before = {"status": history[-1][1], "since": store.iso(history[-1][0])} if history else None
            after = {"status": body.status.value, "since": store.iso(since)}
            keystore.record(conn, actor, "device.service", device_id, before, after, route_of(request))
            return since

    try:
        since = await run_in_threadpool(write)
    except store.UnknownDevice as exc:
        raise HTTPException(404, str(exc)) from None
    return {"device_id": device_id, "status": body.status.value, "since": store.iso(since)}


@router.get("/{device_id}/service", dependencies=[VIEWER], response_model=ServiceHistory)
async def get_service(device_id: str, pool: SyncPoolDep) -> dict[str, Any]:
    """The current status and every change; a registered device without changes is in service."""

    def read() -> tuple[bool, list[tuple[datetime, str]]]:
        with pool.connection() as conn:
            registered = conn.execute("SELECT 1 FROM devices WHERE id = %s", (device_id,)).fetchone() is not None
            return registered, store.service_history(conn, device_id)

    registered, history = await run_in_threadpool(read)
    if not registered and not history:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    now = datetime.now(UTC)
    past = [status for t, status in history if t <= now]
    return {
        "device_id": device_id,
        "status": past[-1] if past else ServiceStatus.IN_SERVICE.value,
        "history": [{"since": store.iso(t), "status": status} for t, status in history],
    }
