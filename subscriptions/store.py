"""Customers, plans, subscriptions, device assignments and exemptions in PostgreSQL.

Every function takes an open psycopg connection and runs as one transaction of its own (nested in
the caller's, as a savepoint, when the caller holds one), so the API, the CLI, the importer and the
webhooks change subscriptions through the same code. Every change of a subscription bumps its
`version` and sends `NOTIFY fleet_subscriptions, '<subscription id>'` inside the same transaction:
PostgreSQL delivers the notification only if the change commits, and the lockout engine
(`subscriptions/engine.py`) re-evaluates that subscription at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from subscriptions.model import (
    PERIOD_MONTHS,
    Assignment,
    Customer,
    Exemption,
    PaymentState,
    Plan,
    Status,
    Subscription,
)
from subscriptions.periods import add_months

CHANNEL = "fleet_subscriptions"  # NOTIFY channel: payload a subscription id, or `customer:<id>`


class SubscriptionError(Exception):
    """A change the data does not allow. `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_SUB_COLUMNS = (
    "id, customer_id, plan_id, status, payment_state, period_start, period_end, payment_due, canceled_at,"
    " version, external_ref"
)


def _subscription(row: tuple[Any, ...]) -> Subscription:
    return Subscription(
        id=row[0], customer_id=row[1], plan_id=row[2], status=Status(row[3]), payment_state=PaymentState(row[4]),
        period_start=row[5], period_end=row[6], payment_due=row[7], canceled_at=row[8], version=row[9],
        external_ref=row[10],
    )  # fmt: skip


def notify(conn: psycopg.Connection, subscription_ids: Sequence[UUID]) -> None:
    """Wake the lockout engine for these subscriptions when the caller's transaction commits."""
    if subscription_ids:
        conn.execute(
            "SELECT pg_notify(%s, s::text) FROM unnest(%s::uuid[]) AS s", (CHANNEL, [str(i) for i in subscription_ids])
        )


# -- customers and plans --------------------------------------------------------------------------
def create_customer(
    conn: psycopg.Connection, name: str, email: str | None, phone: str | None, now: datetime, *,
    locale: str = "en", external_ref: str | None = None, customer_id: UUID | None = None,
) -> Customer:  # fmt: skip
    cid = customer_id or uuid.uuid4()
    conn.execute(
        "INSERT INTO customers (id, external_ref, name, email, phone, locale, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (cid, external_ref, name, email, phone, locale, now, now),
    )
    return Customer(cid, name, email, phone, locale, external_ref)


def update_customer(conn: psycopg.Connection, customer_id: UUID, changes: dict[str, Any], now: datetime) -> Customer:
    """Change name, email, phone or locale; the customer's subscriptions are re-evaluated (a new
    channel changes what notice the lockout policy needs)."""
    allowed = {k: v for k, v in changes.items() if k in ("name", "email", "phone", "locale", "external_ref")}
    with conn.transaction():
        if allowed:
            sets = ", ".join(f"{k} = %s" for k in allowed)
            conn.execute(
                f"UPDATE customers SET {sets}, updated_at = %s WHERE id = %s", (*allowed.values(), now, customer_id)
            )
        found = get_customer(conn, customer_id)
        if found is None:
            raise SubscriptionError(404, f"unknown customer {customer_id}")
        subs = conn.execute("SELECT id FROM subscriptions WHERE customer_id = %s", (customer_id,)).fetchall()
        notify(conn, [r[0] for r in subs])
    return found


def get_customer(conn: psycopg.Connection, customer_id: UUID) -> Customer | None:
    row = conn.execute(
        "SELECT id, name, email, phone, locale, external_ref FROM customers WHERE id = %s", (customer_id,)
    ).fetchone()
    return Customer(*row) if row else None


def list_customers(conn: psycopg.Connection, limit: int = 1000) -> list[Customer]:
    rows = conn.execute(
        "SELECT id, name, email, phone, locale, external_ref FROM customers ORDER BY name, id LIMIT %s", (limit,)
    ).fetchall()
    return [Customer(*r) for r in rows]


def create_plan(conn: psycopg.Connection, plan: Plan, now: datetime) -> Plan:
    if plan.period_months not in PERIOD_MONTHS:
        raise SubscriptionError(422, f"a plan runs 1, 12, 24 or 36 months, not {plan.period_months}")
    conn.execute(
        "INSERT INTO plans (id, name, period_months, price_cents, currency, grace_days, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (plan.id, plan.name, plan.period_months, plan.price_cents, plan.currency, plan.grace_days, now),
    )
    return plan


def get_plan(conn: psycopg.Connection, plan_id: str) -> Plan | None:
    row = conn.execute(
        "SELECT id, name, period_months, price_cents, currency, grace_days FROM plans WHERE id = %s", (plan_id,)
    ).fetchone()
    return Plan(*row) if row else None


def list_plans(conn: psycopg.Connection) -> list[Plan]:
    rows = conn.execute("SELECT id, name, period_months, price_cents, currency, grace_days FROM plans ORDER BY id")
    return [Plan(*r) for r in rows.fetchall()]


# -- subscriptions --------------------------------------------------------------------------------
def create_subscription(
    conn: psycopg.Connection, customer_id: UUID, plan_id: str, start: datetime, now: datetime, *,
    end: datetime | None = None, status: Status = Status.ACTIVE, payment_state: PaymentState = PaymentState.PAID,
    external_ref: str | None = None, subscription_id: UUID | None = None,
) -> Subscription:  # fmt: skip
    """A subscription whose first period runs from `start` for the plan's period (or to `end`)."""
    plan = get_plan(conn, plan_id)
    if plan is None:
        raise SubscriptionError(404, f"unknown plan {plan_id!r}")
    if get_customer(conn, customer_id) is None:
        raise SubscriptionError(404, f"unknown customer {customer_id}")
    period_end = end or add_months(start, plan.period_months)
    if period_end <= start:
        raise SubscriptionError(422, "the period must end after it starts")
    sid = subscription_id or uuid.uuid4()
    with conn.transaction():
        conn.execute(
            "INSERT INTO subscriptions (id, external_ref, customer_id, plan_id, status, payment_state, period_start,"
            " period_end, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (sid, external_ref, customer_id, plan_id, str(status), str(payment_state), start, period_end, now, now),
        )
        notify(conn, [sid])
    found = get_subscription(conn, sid)
    assert found is not None
    return found


def get_subscription(conn: psycopg.Connection, subscription_id: UUID) -> Subscription | None:
    row = conn.execute(f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = %s", (subscription_id,)).fetchone()
    return _subscription(row) if row else None


def get_subscriptions(conn: psycopg.Connection, subscription_ids: Sequence[UUID]) -> list[Subscription]:
    rows = conn.execute(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = ANY(%s::uuid[])", ([str(i) for i in subscription_ids],)
    ).fetchall()
    return [_subscription(r) for r in rows]


def list_subscriptions(
    conn: psycopg.Connection, *, customer_id: UUID | None = None, status: str | None = None,
    ending_before: datetime | None = None, limit: int = 1000,
) -> list[Subscription]:  # fmt: skip
    where, params = [], []
    for clause, value in (
        ("customer_id = %s", customer_id),
        ("status = %s", status),
        ("period_end < %s", ending_before),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = f"SELECT {_SUB_COLUMNS} FROM subscriptions" + (" WHERE " + " AND ".join(where) if where else "")
    return [_subscription(r) for r in conn.execute(sql + " ORDER BY period_end, id LIMIT %s", (*params, limit))]


def _change(
    conn: psycopg.Connection, subscription_id: UUID, sets: str, params: tuple[Any, ...], now: datetime
) -> Subscription:
    """One UPDATE of a subscription that bumps its version and wakes the engine."""
    with conn.transaction():
        row = conn.execute(
            f"UPDATE subscriptions SET {sets}, version = version + 1, updated_at = %s WHERE id = %s"
            f" RETURNING {_SUB_COLUMNS}",
            (*params, now, subscription_id),
        ).fetchone()
        if row is None:
            raise SubscriptionError(404, f"unknown subscription {subscription_id}")
        notify(conn, [subscription_id])
    return _subscription(row)


def _locked_row(conn: psycopg.Connection, subscription_id: UUID) -> tuple[Subscription, Plan]:
    row = conn.execute(
        f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = %s FOR UPDATE", (subscription_id,)
    ).fetchone()
    if row is None:
        raise SubscriptionError(404, f"unknown subscription {subscription_id}")
    sub = _subscription(row)
    plan = get_plan(conn, sub.plan_id)
    assert plan is not None  # a foreign key
    return sub, plan


def renew(conn: psycopg.Connection, subscription_id: UUID, now: datetime, *, periods: int = 1) -> Subscription:
    """Extend the end by the plan's period (`periods` times), paid: the subscription is active again.

    A subscription that lapsed long ago restarts from now rather than from its old end, so a renewal
    always buys a whole period of service (a renewal within the period or its grace continues from the end)."""
    if periods < 1:
        raise SubscriptionError(422, "renew by at least one period")
    with conn.transaction():
        sub, plan = _locked_row(conn, subscription_id)
        lapsed = sub.period_end + timedelta(days=plan.grace_days) < now
        start = now if lapsed else sub.period_start
        end = add_months(now if lapsed else sub.period_end, plan.period_months * periods)
        return _change(
            conn, subscription_id,
            "status = 'active', payment_state = 'paid', payment_due = NULL, canceled_at = NULL,"
            " period_start = %s, period_end = %s",
            (start, end), now,
        )  # fmt: skip


def record_payment(
    conn: psycopg.Connection, subscription_id: UUID, paid: bool, now: datetime, *, due: datetime | None = None,
    event_at: datetime | None = None,
) -> Subscription:  # fmt: skip
    """A payment succeeded (`paid`) or failed. Paid: payment state `paid`, status `active` (a canceled
    subscription stays canceled). Failed: payment state `failed`, status `past_due`, and the invoice
    falls due at `due` (default: now, or the due date already set).

    `event_at` is the outside event's time (a payment webhook): an event older than the newest one
    applied is ignored and the stored subscription returned unchanged, so a late, out-of-order
    event never rolls a subscription back.
    """
    with conn.transaction():
        sub, _plan = _locked_row(conn, subscription_id)
        if event_at is not None:
            newest = conn.execute(
                "SELECT source_event_at FROM subscriptions WHERE id = %s", (subscription_id,)
            ).fetchone()
            if newest and newest[0] is not None and event_at <= newest[0]:
                return sub
        if paid:
            status = sub.status if sub.status is Status.CANCELED else Status.ACTIVE
            sets, params = "payment_state = 'paid', payment_due = NULL, status = %s", (str(status),)
        else:
            status = sub.status if sub.status is Status.CANCELED else Status.PAST_DUE
            when = due or sub.payment_due or now
            sets, params = "payment_state = 'failed', payment_due = %s, status = %s", (when, str(status))
        if event_at is not None:
            sets += ", source_event_at = %s"
            params = (*params, event_at)
        return _change(conn, subscription_id, sets, params, now)


def open_invoice(conn: psycopg.Connection, subscription_id: UUID, due: datetime, now: datetime) -> Subscription:
    """An invoice is open and falls due at `due` (payment state `due`)."""
    return _change(conn, subscription_id, "payment_state = 'due', payment_due = %s", (due,), now)


def cancel(conn: psycopg.Connection, subscription_id: UUID, now: datetime) -> Subscription:
    """Canceled: it does not renew. The period already paid for runs to its end, without grace days;
    the lockout engine locks the devices then."""
    return _change(conn, subscription_id, "status = 'canceled', canceled_at = %s", (now,), now)


def set_status(conn: psycopg.Connection, changes: Sequence[tuple[UUID, int, Status]], now: datetime) -> int:
    """The lockout engine's status moves (active → grace → expired), each a compare-and-set on the
    version it was decided from: a change that raced a renewal is dropped (the engine re-evaluates)."""
    if not changes:
        return 0
    rows = conn.execute(
        "UPDATE subscriptions s SET status = u.status, version = s.version + 1, updated_at = %s"
        " FROM unnest(%s::uuid[], %s::bigint[], %s::text[]) AS u(id, version, status)"
        " WHERE s.id = u.id AND s.version = u.version AND s.status <> u.status RETURNING s.id",
        (now, [str(c[0]) for c in changes], [c[1] for c in changes], [str(c[2]) for c in changes]),
    ).fetchall()
    return len(rows)


# -- devices and exemptions -----------------------------------------------------------------------
def assign_device(conn: psycopg.Connection, subscription_id: UUID, device_id: str, now: datetime) -> Assignment:
    """Put a device on a subscription, releasing it from any other (the history keeps both rows)."""
    return assign_devices(conn, subscription_id, [device_id], now)[0]


def assign_devices(
    conn: psycopg.Connection, subscription_id: UUID, device_ids: Sequence[str], now: datetime
) -> list[Assignment]:
    with conn.transaction():
        if get_subscription(conn, subscription_id) is None:
            raise SubscriptionError(404, f"unknown subscription {subscription_id}")
        released = conn.execute(
            "UPDATE subscription_devices SET released_at = %s WHERE device_id = ANY(%s) AND released_at IS NULL"
            " AND subscription_id <> %s RETURNING subscription_id",
            (now, list(device_ids), subscription_id),
        ).fetchall()
        conn.execute(
            "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at)"
            " SELECT %s, d, %s FROM unnest(%s::text[]) AS d WHERE NOT EXISTS (SELECT 1 FROM subscription_devices o"
            " WHERE o.device_id = d AND o.subscription_id = %s AND o.released_at IS NULL)",
            (subscription_id, now, list(device_ids), subscription_id),
        )
        conn.execute(
            "UPDATE subscriptions SET version = version + 1, updated_at = %s WHERE id = %s", (now, subscription_id)
        )
        notify(conn, [subscription_id, *{r[0] for r in released}])
    return [Assignment(subscription_id, d, now) for d in device_ids]


def release_device(conn: psycopg.Connection, device_id: str, now: datetime) -> UUID | None:
    """Take a device off its subscription; returns the subscription it was on."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE subscription_devices SET released_at = %s WHERE device_id = %s AND released_at IS NULL"
            " RETURNING subscription_id",
            (now, device_id),
        ).fetchone()
        if row is not None:
            notify(conn, [row[0]])
    return row[0] if row else None


def devices_of(conn: psycopg.Connection, subscription_id: UUID) -> list[Assignment]:
    rows = conn.execute(
        "SELECT subscription_id, device_id, assigned_at, released_at FROM subscription_devices"
        " WHERE subscription_id = %s ORDER BY assigned_at, device_id",
        (subscription_id,),
    ).fetchall()
    return [Assignment(*r) for r in rows]


def subscription_of(conn: psycopg.Connection, device_id: str) -> UUID | None:
    row = conn.execute(
        "SELECT subscription_id FROM subscription_devices WHERE device_id = %s AND released_at IS NULL", (device_id,)
    ).fetchone()
    return row[0] if row else None


def exempt(conn: psycopg.Connection, exemption: Exemption, now: datetime) -> Exemption:
    """Leave a device alone until `until` (a courier in hospital, a device in the workshop)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO exemptions (device_id, until, reason, created_by, created_at) VALUES (%s, %s, %s, %s, %s)",
            (exemption.device_id, exemption.until, exemption.reason, exemption.created_by, now),
        )
        sub = subscription_of(conn, exemption.device_id)
        if sub is not None:
            notify(conn, [sub])
    return exemption


def end_exemptions(conn: psycopg.Connection, device_id: str, now: datetime) -> int:
    """End a device's exemptions now (they stay in the table as history)."""
    with conn.transaction():
        n = conn.execute(
            "UPDATE exemptions SET until = %s WHERE device_id = %s AND until > %s", (now, device_id, now)
        ).rowcount
        sub = subscription_of(conn, device_id)
        if sub is not None:
            notify(conn, [sub])
    return n
