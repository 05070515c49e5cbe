"""Shop orders and payment events applied to the database, once per event id, never backwards.

Each event is applied in one transaction that starts by recording its id in `webhook_events`: a
duplicate (the shop retries for days) finds the id there and changes nothing. A subscription
remembers the time of the newest outside event applied (`source_event_at`); an older event that
arrives late is recorded but leaves the subscription as it is.

An order creates or updates the customer (by the shop's customer reference), creates the
subscription (by the order id) with its period from the plan, assigns the devices (moving a device
off another subscription keeps the history) and queues a welcome message per channel.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, Field

from subscriptions.importer import NAMESPACE, PHONE, SERIAL
from subscriptions.periods import add_months
from subscriptions.render import render_welcome
from subscriptions.store import notify

Ref = Field(min_length=1, max_length=200)


class OrderCustomer(BaseModel):
    ref: str = Ref
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
    phone: str | None = Field(default=None, pattern=PHONE.pattern)
    locale: str = Field(default="en", pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


class OrderData(BaseModel):
    order_id: str = Ref
    customer: OrderCustomer
    plan: str = Field(min_length=1, max_length=64)
    start: date | datetime
    devices: list[str] = Field(min_length=1, max_length=1000)


class OrderEvent(BaseModel):
    id: str = Ref
    type: Literal["order.completed", "order.updated"]
    created: datetime
    data: OrderData


class PaymentData(BaseModel):
    subscription_ref: str = Ref  # the order id
    due: datetime | None = None  # failed: when the open invoice fell due (default: the event's time)


class PaymentEvent(BaseModel):
    id: str = Ref
    type: Literal["payment.paid", "payment.failed"]
    created: datetime
    data: PaymentData


class WebhookRefused(ValueError):
    """A well-signed event the fleet cannot apply (an unknown plan or subscription, a bad device id): 422."""


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _record(conn: psycopg.Connection, source: str, event: BaseModel, now: datetime) -> bool:
    """False when the event id was seen before."""
    row = conn.execute(
        "INSERT INTO webhook_events (event_id, source, kind, occurred_at, received_at, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        (f"{source}:{event.id}", source, event.type, _aware(event.created), now,  # type: ignore[attr-defined]
         event.model_dump_json()),
    ).fetchone()  # fmt: skip
    return row is not None


def _outcome(conn: psycopg.Connection, source: str, event_id: str, outcome: str) -> None:
    conn.execute("UPDATE webhook_events SET outcome = %s WHERE event_id = %s", (outcome, f"{source}:{event_id}"))


def apply_order(conn: psycopg.Connection, event: OrderEvent, now: datetime) -> dict[str, Any]:
    d, at = event.data, _aware(event.created)
    bad = [x for x in d.devices if not SERIAL.match(x)]
    if bad:
        raise WebhookRefused(f"device ids not valid: {bad[:5]}")
    with conn.transaction():
        if not _record(conn, "orders", event, now):
            return {"duplicate": True}
        plan = conn.execute("SELECT name, period_months FROM plans WHERE id = %s", (d.plan,)).fetchone()
        if plan is None:
            raise WebhookRefused(f"unknown plan {d.plan!r}")
        c = d.customer
        customer_id = conn.execute(
            "INSERT INTO customers (id, external_ref, name, email, phone, locale, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (external_ref) DO UPDATE SET"
            " name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone, locale = EXCLUDED.locale,"
            " updated_at = EXCLUDED.updated_at RETURNING id",
            (uuid.uuid5(NAMESPACE, f"customer:{c.ref}"), c.ref, c.name, c.email, c.phone, c.locale, now, now),
        ).fetchone()[0]  # type: ignore[index]
        start = d.start if isinstance(d.start, datetime) else datetime.combine(d.start, datetime.min.time())
        start = _aware(start)
        end = add_months(start, plan[1])
        created = conn.execute(
            "INSERT INTO subscriptions (id, external_ref, customer_id, plan_id, status, period_start, period_end,"
            " source_event_at, created_at, updated_at) VALUES (%s, %s, %s, %s, 'active', %s, %s, %s, %s, %s)"
            " ON CONFLICT (external_ref) DO NOTHING RETURNING id",
            (uuid.uuid5(NAMESPACE, f"order:{d.order_id}"), d.order_id, customer_id, d.plan, start, end, at, now, now),
        ).fetchone()
        sub_id, newer = _subscription(conn, d.order_id, at, created is not None)
        if newer:
            _assign(conn, sub_id, d.devices, now)
            notify(conn, [sub_id])  # the lockout engine acts on it at once, as on any change
        if created is not None:
            _welcome(conn, customer_id, sub_id, c, plan[0], end, d.devices, now)
        outcome = "created" if created else ("updated" if newer else "stale: older than the applied state")
        _outcome(conn, "orders", event.id, outcome)
    return {"duplicate": False, "outcome": outcome, "subscription_id": str(sub_id), "customer_id": str(customer_id)}


def _subscription(conn: psycopg.Connection, ref: str, at: datetime, created: bool) -> tuple[uuid.UUID, bool]:
    """The order's subscription, and whether this event is the newest applied to it (then it is marked so)."""
    if created:
        row = conn.execute("SELECT id FROM subscriptions WHERE external_ref = %s", (ref,)).fetchone()
        assert row is not None
        return row[0], True
    row = conn.execute(
        "UPDATE subscriptions SET source_event_at = %s, version = version + 1, updated_at = now()"
        " WHERE external_ref = %s AND (source_event_at IS NULL OR source_event_at < %s) RETURNING id",
        (at, ref, at),
    ).fetchone()
    if row is not None:
        return row[0], True
    found = conn.execute("SELECT id FROM subscriptions WHERE external_ref = %s", (ref,)).fetchone()
    assert found is not None
    return found[0], False


def _assign(conn: psycopg.Connection, sub_id: uuid.UUID, devices: list[str], now: datetime) -> None:
    conn.execute(
        "UPDATE subscription_devices SET released_at = %s WHERE released_at IS NULL"
        " AND ((device_id = ANY(%s) AND subscription_id <> %s) OR (subscription_id = %s AND NOT device_id = ANY(%s)))",
        (now, devices, sub_id, sub_id, devices),
    )
    conn.execute(
        "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at)"
        " SELECT %s, d, %s FROM unnest(%s::text[]) AS d WHERE NOT EXISTS"
        " (SELECT 1 FROM subscription_devices s WHERE s.device_id = d AND s.released_at IS NULL)",
        (sub_id, now, devices),
    )


def _welcome(
    conn: psycopg.Connection, customer_id: uuid.UUID, sub_id: uuid.UUID, c: OrderCustomer, plan: str,
    end: datetime, devices: list[str], now: datetime,
) -> None:  # fmt: skip
    body = render_welcome(c.name, plan, end, devices, c.locale)
    for channel, to in (("email", c.email), ("sms", c.phone)):
        if to:
            conn.execute(
                "INSERT INTO outbox (idempotency_key, kind, channel, customer_id, recipient, subject, body_text,"
                " next_at, created_at) VALUES (%s, 'welcome', %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (f"welcome:{sub_id}:{channel}", channel, customer_id, to, body.subject, body.body_text, now, now),
            )
    conn.execute("NOTIFY fleet_outbox")


def apply_payment(conn: psycopg.Connection, event: PaymentEvent, now: datetime) -> dict[str, Any]:
    at = _aware(event.created)
    with conn.transaction():
        if not _record(conn, "payments", event, now):
            return {"duplicate": True}
        if event.type == "payment.paid":
            sql = (
                "UPDATE subscriptions SET payment_state = 'paid', payment_due = NULL, status = CASE"
                " WHEN status IN ('past_due', 'grace') AND period_end > %s THEN 'active' ELSE status END,"
            )
            params: tuple[Any, ...] = (now,)
        else:
            sql = (
                "UPDATE subscriptions SET payment_state = 'failed', payment_due = COALESCE(%s, payment_due, %s),"
                " status = CASE WHEN status IN ('active', 'trialing') THEN 'past_due' ELSE status END,"
            )
            params = (event.data.due and _aware(event.data.due), at)
        row = conn.execute(
            sql + " source_event_at = %s, version = version + 1, updated_at = %s"
            " WHERE external_ref = %s AND (source_event_at IS NULL OR source_event_at < %s) RETURNING id, status",
            (*params, at, now, event.data.subscription_ref, at),
        ).fetchone()  # fmt: skip
        if row is None:
            exists = conn.execute(
                "SELECT 1 FROM subscriptions WHERE external_ref = %s", (event.data.subscription_ref,)
            ).fetchone()
            if exists is None:
                raise WebhookRefused(f"unknown subscription {event.data.subscription_ref!r}")
            outcome = "stale: older than the applied state"
        else:
            outcome = f"applied: {row[1]}"
            notify(conn, [row[0]])  # a payment unlocks (or a failure starts the clock) at once
        _outcome(conn, "payments", event.id, outcome)
    return {"duplicate": False, "outcome": outcome}
