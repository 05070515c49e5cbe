"""A device's service status (in_service, maintenance, inactive): what utilization counts it as.

Kept apart from `devices.py` (registration) because it belongs to fleet operations, not to broker
accounts. Setting a status recomputes the device's utilization rows from the change on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import ConfigDep
from geofence import store
from geofence.utilization import ServiceStatus

router = APIRouter(prefix="/v1/devices", tags=["devices"])


class ServiceUpdate(BaseModel):
    status: ServiceStatus
    since: datetime | None = Field(default=None, description="when the status began (default: now)")


@router.put("/{device_id}/service")
async def set_service(device_id: str, body: ServiceUpdate, config: ConfigDep) -> dict[str, Any]:
    try:
        since = await run_in_threadpool(
            store.set_device_service, config.database_url, device_id, body.status, body.since
        )
    except store.UnknownDevice as exc:
        raise HTTPException(404, str(exc)) from None
    return {"device_id": device_id, "status": body.status.value, "since": store.iso(since)}


@router.get("/{device_id}/service")
async def get_service(device_id: str, config: ConfigDep) -> dict[str, Any]:
    """The current status and every change; a registered device without changes is in service."""

    def read() -> tuple[bool, list[tuple[datetime, str]]]:
        with store.connect(config.database_url) as conn:
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
