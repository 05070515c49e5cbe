"""The audit trail, for admins: every accepted write, newest first, filterable and paged.

Paging is by id: pass the `next_before_id` of one page as `before_id` to get the next; rows added
meanwhile do not shift the pages.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api import keystore
from api.auth import ADMIN
from api.db import SyncPoolDep
from api.inputs import FleetTime
from api.schemas import AuditPage

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[ADMIN])


@router.get("", response_model=AuditPage)
async def read_audit(
    pool: SyncPoolDep,
    key_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. zone.replace, device.rotate")] = None,
    target: Annotated[str | None, Query(max_length=200, description="a device, zone or key id")] = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    filters = {"key_id": key_id, "action": action, "target": target, "since": since, "until": until,
               "before_id": before_id}  # fmt: skip

    def read() -> list[dict[str, Any]]:
        with pool.connection() as conn:
            return keystore.read_audit(conn, filters, limit)

    items = await run_in_threadpool(read)
    return {"items": items, "next_before_id": items[-1]["id"] if len(items) == limit else None}
