"""The shop's webhooks: `POST /v1/webhooks/orders` and `POST /v1/webhooks/payments`.

Public in the API-key sense (the shop holds no key) but authenticated by signature: the header
`Fleet-Signature: t=<unix seconds>,v1=<HMAC-SHA256 hex of "<t>.<raw body>">` with the shared secret
(`FLEET_WEBHOOK_SECRET_FILE` or `FLEET_WEBHOOK_SECRET`; never logged). Unsigned, badly signed or
more than 5 minutes old: 401. No secret configured: 404 (the routes are off). A duplicate event id: 200 with
`"duplicate": true` and nothing changed (the shop stops retrying).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ValidationError

from api.auth import PUBLIC_ROUTE
from geofence.store import connect
from subscriptions.signing import HEADER, SignatureError, verify
from subscriptions.webhooks import OrderEvent, PaymentEvent, WebhookRefused, apply_order, apply_payment

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=[PUBLIC_ROUTE])

_ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"description": "unsigned, badly signed, or signed more than 5 minutes ago"},
    422: {"description": "not a valid event, or one naming an unknown plan or subscription"},
    404: {"description": "webhooks are not enabled (no secret configured)"},
}


async def _verified(request: Request, model: type[BaseModel]) -> Any:
    secret: bytes | None = getattr(request.app.state, "webhook_secret", None)
    if not secret:
        raise HTTPException(404, "webhooks are not enabled: set FLEET_WEBHOOK_SECRET_FILE")
    body = await request.body()
    tolerance = getattr(request.app.state, "webhook_tolerance_s", 300.0)
    try:
        verify(request.headers.get(HEADER), body, secret, time.time(), tolerance)
    except SignatureError as exc:
        raise HTTPException(401, str(exc)) from None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None


async def _apply(request: Request, action: Any, event: Any) -> dict[str, Any]:
    database_url = request.app.state.config.database_url

    def run() -> dict[str, Any]:
        with connect(database_url, "fleet api webhooks") as conn:
            return action(conn, event, datetime.now(UTC))

    try:
        return await run_in_threadpool(run)
    except WebhookRefused as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/orders", responses=_ANSWERS)
async def order(request: Request) -> dict[str, Any]:
    """A shop order (`order.completed`, `order.updated`): customer, subscription, devices, welcome message."""
    return await _apply(request, apply_order, await _verified(request, OrderEvent))


@router.post("/payments", responses=_ANSWERS)
async def payment(request: Request) -> dict[str, Any]:
    """`payment.paid` or `payment.failed` for a subscription (by the order id); older events never roll back."""
    return await _apply(request, apply_payment, await _verified(request, PaymentEvent))
