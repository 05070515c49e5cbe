"""Customers, plans and subscriptions: admins create and change them, viewers read them.

Every write goes through subscriptions/store.py (which wakes the lockout engine in the same
transaction) and is audited. `GET /v1/devices/{id}/subscription` sums up a device's subscription
and what the lockout policy says about it now, for the map page.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import VIEWER, AdminKey, route_of
from api.deps import ConfigDep
from api.keystore import Actor
from subscriptions import lockout_store, store
from subscriptions.guard import unlock_refusal
from subscriptions.model import Customer, Exemption, PaymentState, Plan, Status, Subscription
from subscriptions.settings import LockoutSettings
from subscriptions.store import SubscriptionError

router = APIRouter(tags=["subscriptions"])
T = TypeVar("T")
_REFUSALS: dict[int | str, dict[str, Any]] = {404: {"description": "unknown customer, plan or subscription"},
                                              409: {"description": "already exists"}}  # fmt: skip
PLAN_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class CustomerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$")
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")
    locale: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    external_ref: str | None = Field(default=None, max_length=200)


class CustomerUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,255}$")
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")
    locale: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class PlanCreate(BaseModel):
    id: str = Field(pattern=PLAN_ID)
    name: str = Field(min_length=1, max_length=200)
    period_months: int = Field(description="1, 12, 24 or 36")
    price_cents: int = Field(ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    grace_days: int = Field(default=0, ge=0, le=90)


class SubscriptionCreate(BaseModel):
    customer_id: UUID
    plan_id: str = Field(pattern=PLAN_ID)
    start: datetime
    end: datetime | None = Field(default=None, description="default: start plus the plan's period")
    status: Status = Status.ACTIVE
    external_ref: str | None = Field(default=None, max_length=200)
    devices: list[str] = Field(default_factory=list, max_length=10_000)


class SubscriptionPublic(BaseModel):
    id: UUID
    customer_id: UUID
    plan_id: str
    status: Status
    payment_state: PaymentState
    period_start: datetime
    period_end: datetime
    payment_due: datetime | None
    canceled_at: datetime | None
    version: int
    external_ref: str | None
    devices: list[str] = Field(default_factory=list)


class Devices(BaseModel):
    device_ids: list[str] = Field(min_length=1, max_length=10_000)


class Renewal(BaseModel):
    periods: int = Field(default=1, ge=1, le=36)


class Payment(BaseModel):
    paid: bool
    due: datetime | None = Field(default=None, description="failed: when the invoice falls due (default now)")


class ExemptionCreate(BaseModel):
    until: datetime
    reason: str = Field(min_length=1, max_length=500)


def _public(sub: Subscription, devices: list[str] | None = None) -> SubscriptionPublic:
    return SubscriptionPublic(
        id=sub.id, customer_id=sub.customer_id, plan_id=sub.plan_id, status=sub.status,
        payment_state=sub.payment_state, period_start=sub.period_start, period_end=sub.period_end,
        payment_due=sub.payment_due, canceled_at=sub.canceled_at, version=sub.version,
        external_ref=sub.external_ref, devices=devices or [],
    )  # fmt: skip


def _customer(c: Customer) -> dict[str, Any]:
    return {"id": str(c.id), "name": c.name, "email": c.email, "phone": c.phone, "locale": c.locale,
            "external_ref": c.external_ref}  # fmt: skip


async def _write(config: ConfigDep, request: Request, actor: Actor, action: str, target: str,
                 change: Callable[[psycopg.Connection, datetime], T], shown: Callable[[T], Any]) -> T:  # fmt: skip
    """One change and its audit record in one transaction; store refusals become HTTP errors."""

    def run() -> T:
        with psycopg.connect(config.database_url, autocommit=True) as conn, conn.transaction():
            done = change(conn, datetime.now(UTC))
            keystore.record(conn, actor, action, target, None, shown(done), route_of(request))
            return done

    try:
        return await run_in_threadpool(run)
    except SubscriptionError as exc:
        raise HTTPException(exc.status, exc.reason) from None
    except psycopg.errors.UniqueViolation:
        raise HTTPException(409, f"{target} exists already") from None
    except psycopg.errors.ForeignKeyViolation as exc:
        raise HTTPException(404, str(exc.diag.message_detail or exc)) from None


async def _read(config: ConfigDep, read: Callable[[psycopg.Connection], T]) -> T:
    def run() -> T:
        with psycopg.connect(config.database_url) as conn:
            return read(conn)

    return await run_in_threadpool(run)


def _dump(sub: Subscription) -> dict[str, Any]:
    return _public(sub).model_dump(mode="json")


# -- customers and plans --------------------------------------------------------------------------
@router.post("/v1/customers", status_code=201, responses=_REFUSALS)
async def create_customer(actor: AdminKey, body: CustomerCreate, request: Request, config: ConfigDep) -> dict[str, Any]:
    made = await _write(config, request, actor, "customer.create", body.name,
                        lambda conn, now: store.create_customer(conn, body.name, body.email, body.phone, now,
                                                                locale=body.locale, external_ref=body.external_ref),
                        _customer)  # fmt: skip
    return _customer(made)


@router.patch("/v1/customers/{customer_id}", responses=_REFUSALS)
async def update_customer(
    actor: AdminKey, customer_id: UUID, body: CustomerUpdate, request: Request, config: ConfigDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    done = await _write(config, request, actor, "customer.update", str(customer_id),
                        lambda conn, now: store.update_customer(conn, customer_id, changes, now),
                        _customer)  # fmt: skip
    return _customer(done)


@router.get("/v1/customers", dependencies=[VIEWER])
async def list_customers(config: ConfigDep) -> list[dict[str, Any]]:
    return [_customer(c) for c in await _read(config, store.list_customers)]


@router.get("/v1/customers/{customer_id}", responses=_REFUSALS, dependencies=[VIEWER])
async def get_customer(customer_id: UUID, config: ConfigDep) -> dict[str, Any]:
    found = await _read(config, lambda conn: store.get_customer(conn, customer_id))
    if found is None:
        raise HTTPException(404, f"unknown customer {customer_id}")
    return _customer(found)


@router.post("/v1/plans", status_code=201, responses=_REFUSALS)
async def create_plan(actor: AdminKey, body: PlanCreate, request: Request, config: ConfigDep) -> PlanCreate:
    plan = Plan(body.id, body.name, body.period_months, body.price_cents, body.currency, body.grace_days)
    await _write(config, request, actor, "plan.create", body.id, lambda conn, now: store.create_plan(conn, plan, now),
                 lambda _p: body.model_dump(mode="json"))  # fmt: skip
    return body


@router.get("/v1/plans", dependencies=[VIEWER])
async def list_plans(config: ConfigDep) -> list[PlanCreate]:
    plans = await _read(config, store.list_plans)
    return [PlanCreate(id=p.id, name=p.name, period_months=p.period_months, price_cents=p.price_cents,
                       currency=p.currency, grace_days=p.grace_days) for p in plans]  # fmt: skip


# -- subscriptions --------------------------------------------------------------------------------
@router.post("/v1/subscriptions", status_code=201, responses=_REFUSALS)
async def create_subscription(
    actor: AdminKey, body: SubscriptionCreate, request: Request, config: ConfigDep
) -> SubscriptionPublic:
    def change(conn: psycopg.Connection, now: datetime) -> Subscription:
        sub = store.create_subscription(conn, body.customer_id, body.plan_id, body.start, now, end=body.end,
                                        status=body.status, external_ref=body.external_ref)  # fmt: skip
        if body.devices:
            store.assign_devices(conn, sub.id, body.devices, now)
        return sub

    sub = await _write(config, request, actor, "subscription.create", body.plan_id, change, _dump)
    return _public(sub, body.devices)


@router.get("/v1/subscriptions", dependencies=[VIEWER])
async def list_subscriptions(
    config: ConfigDep, status: Status | None = None, customer_id: UUID | None = None, limit: int = 1000
) -> list[SubscriptionPublic]:
    subs = await _read(config, lambda conn: store.list_subscriptions(
        conn, customer_id=customer_id, status=status and str(status), limit=max(1, min(limit, 10_000))))  # fmt: skip
    return [_public(s) for s in subs]


@router.get("/v1/subscriptions/{subscription_id}", responses=_REFUSALS, dependencies=[VIEWER])
async def get_subscription(subscription_id: UUID, config: ConfigDep) -> SubscriptionPublic:
    def read(conn: psycopg.Connection) -> tuple[Subscription | None, list[str]]:
        sub = store.get_subscription(conn, subscription_id)
        devices = [a.device_id for a in store.devices_of(conn, subscription_id) if a.released_at is None]
        return sub, devices

    sub, devices = await _read(config, read)
    if sub is None:
        raise HTTPException(404, f"unknown subscription {subscription_id}")
    return _public(sub, devices)


@router.post("/v1/subscriptions/{subscription_id}/devices", responses=_REFUSALS)
async def assign_devices(
    actor: AdminKey, subscription_id: UUID, body: Devices, request: Request, config: ConfigDep
) -> dict[str, Any]:
    await _write(config, request, actor, "subscription.assign", str(subscription_id),
                 lambda conn, now: store.assign_devices(conn, subscription_id, body.device_ids, now),
                 lambda _a: {"devices": body.device_ids})  # fmt: skip
    return {"subscription_id": str(subscription_id), "assigned": body.device_ids}


@router.delete("/v1/devices/{device_id}/subscription", responses=_REFUSALS)
async def release_device(actor: AdminKey, device_id: str, request: Request, config: ConfigDep) -> dict[str, Any]:
    sid = await _write(config, request, actor, "subscription.release", device_id,
                       lambda conn, now: store.release_device(conn, device_id, now),
                       lambda s: {"subscription_id": str(s) if s else None})  # fmt: skip
    if sid is None:
        raise HTTPException(404, f"{device_id} is on no subscription")
    return {"device_id": device_id, "released_from": str(sid)}


@router.post("/v1/subscriptions/{subscription_id}/renew", responses=_REFUSALS)
async def renew(
    actor: AdminKey, subscription_id: UUID, body: Renewal, request: Request, config: ConfigDep
) -> SubscriptionPublic:
    """Extends the end by the plan's period; the lockout engine unlocks the devices at once."""
    done = await _write(config, request, actor, "subscription.renew", str(subscription_id),
                        lambda conn, now: store.renew(conn, subscription_id, now, periods=body.periods),
                        _dump)  # fmt: skip
    return _public(done)


@router.post("/v1/subscriptions/{subscription_id}/payments", responses=_REFUSALS)
async def record_payment(
    actor: AdminKey, subscription_id: UUID, body: Payment, request: Request, config: ConfigDep
) -> SubscriptionPublic:
    done = await _write(config, request, actor, "subscription.payment", str(subscription_id),
                        lambda conn, now: store.record_payment(conn, subscription_id, body.paid, now, due=body.due),
                        _dump)  # fmt: skip
    return _public(done)


@router.post("/v1/subscriptions/{subscription_id}/cancel", responses=_REFUSALS)
async def cancel(actor: AdminKey, subscription_id: UUID, request: Request, config: ConfigDep) -> SubscriptionPublic:
    done = await _write(config, request, actor, "subscription.cancel", str(subscription_id),
                        lambda conn, now: store.cancel(conn, subscription_id, now), _dump)  # fmt: skip
    return _public(done)


@router.post("/v1/devices/{device_id}/exemptions", status_code=201)
async def exempt(
    actor: AdminKey, device_id: str, body: ExemptionCreate, request: Request, config: ConfigDep
) -> dict[str, Any]:
    exemption = Exemption(device_id, body.until, body.reason, f"key:{actor.name}")
    await _write(config, request, actor, "device.exempt", device_id,
                 lambda conn, now: store.exempt(conn, exemption, now),
                 lambda _e: body.model_dump(mode="json"))  # fmt: skip
    return {"device_id": device_id, **body.model_dump(mode="json"), "created_by": exemption.created_by}


@router.get("/v1/devices/{device_id}/subscription", responses=_REFUSALS, dependencies=[VIEWER])
async def device_subscription(device_id: str, config: ConfigDep) -> dict[str, Any]:
    """The device's subscription, whether an operator may unlock it now, and its latest lockout decisions."""
    policy = LockoutSettings().policy()

    def read(conn: psycopg.Connection) -> dict[str, Any] | None:
        found = lockout_store.device_summary(conn, device_id)
        if found is None:
            return None
        found["unlock_refused"] = unlock_refusal(conn, device_id, policy, datetime.now(UTC))
        return found

    found = await _read(config, read)
    if found is None:  # a device on no subscription is a normal answer, not a missing resource
        return {"device_id": device_id, "subscription": None, "assigned_at": None, "locked_by_policy": False,
                "unlock_refused": None, "decisions": []}  # fmt: skip
    decisions = [{"desired": d, "reason": r, "transition": t, "decided_at": at.isoformat(), "command_id": c}
                 for d, r, t, at, c in found["decisions"]]  # fmt: skip
    return {
        "device_id": device_id, "subscription": _public(found["subscription"]).model_dump(mode="json"),
        "assigned_at": found["assigned_at"].isoformat(), "locked_by_policy": bool(decisions) and
        next((d["desired"] for d in decisions if d["desired"] != "none"), None) == "lock",
        "unlock_refused": found["unlock_refused"], "decisions": decisions,
    }  # fmt: skip
