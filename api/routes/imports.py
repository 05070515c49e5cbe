"""Bulk import over the API (admin): `POST /v1/imports?filename=fleet.xml` with the file as the body.

The same parser, validation and writer as `fleet import` (subscriptions/importer_store.py). The
answer is the report: rows, valid rows, row-level errors (row, field, reason), whether anything was
imported and why, and the MQTT credentials of the devices registered by this import (shown once).
Invalid rows make it import nothing (422) unless `partial=true`. The request body limit of the API
applies (api/inputs.py); larger files go through `fleet import`.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from api import keystore
from api.auth import AdminKey, route_of
from api.routes.devices import get_registry
from geofence.store import connect
from subscriptions.importer_store import run_import

router = APIRouter(prefix="/v1/imports", tags=["imports"])


@router.post("", responses={422: {"description": "row-level errors: nothing imported"},
                            503: {"description": "no broker admin account to register devices"}})  # fmt: skip
async def import_file(
    request: Request, actor: AdminKey,
    filename: Annotated[str, Query(pattern=r"^[\w.-]{1,128}\.(csv|xml|CSV|XML)$")],
    partial: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Import devices, customers and subscriptions from a CSV or XML body (admin)."""
    registry = get_registry(request)
    data = await request.body()
    database_url = request.app.state.config.database_url
    report = await run_in_threadpool(
        run_import, filename, data, database_url, registry, datetime.now(UTC), partial=partial
    )
    body = {
        "rows": report.rows, "valid": report.valid, "imported": report.imported, "outcome": report.outcome,
        "errors": [asdict(e) for e in report.errors],
        "written": {"devices": report.devices_registered, "customers": report.customers_written,
                    "subscriptions": report.subscriptions_written, "assignments": report.assignments_written},
        "credentials": [{"device_id": c.device_id, "mqtt_username": c.username, "mqtt_password": c.password}
                        for c in report.credentials],
    }  # fmt: skip
    if not report.imported and report.errors:
        raise HTTPException(422, {k: body[k] for k in ("rows", "valid", "imported", "outcome", "errors")})

    def audit() -> None:
        with connect(database_url, "fleet api audit") as conn:
            keystore.record(conn, actor, "subscriptions.import", filename, None, body["written"], route_of(request))

    await run_in_threadpool(audit)
    return body
