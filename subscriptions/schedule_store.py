"""Reading what the reminder schedule needs, and queueing its messages: outbox rows and their
reminder_items in one transaction.

One scheduler queues at a time (a transaction-scoped advisory lock), and it reads the items already
queued inside that lock, so two notify services never queue the same item twice; the unique keys
(`outbox.idempotency_key`, the primary key of `reminder_items`) are the last line of defence. Rows go
in as one INSERT ... SELECT FROM unnest(...) per table: thousands of messages cost two round trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from uuid import UUID

import psycopg

from subscriptions.model import Assignment, Customer, PaymentState, Plan, Status, Subscription
from subscriptions.reminders import DEFAULT_OFFSETS, DEFAULT_SEND_TIME, ItemKey, Message, next_due, schedule
from subscriptions.render import render_message

SCHEDULER_LOCK = 0x5EB5_0001  # pg_advisory_xact_lock key of the reminder scheduler
OUTBOX_CHANNEL = "fleet_outbox"  # NOTIFY'd when rows are queued: the sender wakes at once


@dataclass(frozen=True, slots=True)
class ScheduleState:
    subscriptions: list[Subscription]
    customers: dict[UUID, Customer]
    plans: dict[str, Plan]
    assignments: list[Assignment]
    sent: set[ItemKey]


def load_state(conn: psycopg.Connection, now: datetime, horizon_days: int) -> ScheduleState:
    """Subscriptions that end within `horizon_days` (or whose end day is today or later and an
    invoice is open), with their customers, plans, open assignments and already-queued items."""
    rows = conn.execute(
        "SELECT id, customer_id, plan_id, status, payment_state, period_start, period_end, payment_due,"
        " canceled_at, version, external_ref FROM subscriptions"
        " WHERE canceled_at IS NULL AND status = ANY(%s)"
        "   AND (period_end BETWEEN %s AND %s OR payment_state <> 'paid')",
        (["trialing", "active", "past_due", "grace"], now - timedelta(days=1), now + timedelta(days=horizon_days + 1)),
    ).fetchall()
    subs = [
        Subscription(r[0], r[1], r[2], Status(r[3]), PaymentState(r[4]), r[5], r[6], r[7], r[8], r[9], r[10])
        for r in rows
    ]
    ids = [s.id for s in subs]
    customers = {
        r[0]: Customer(r[0], r[1], r[2], r[3], r[4], r[5])
        for r in conn.execute(
            "SELECT id, name, email, phone, locale, external_ref FROM customers WHERE id = ANY(%s)",
            (list({s.customer_id for s in subs}),),
        )
    }
    plans = {
        r[0]: Plan(r[0], r[1], r[2], r[3], r[4], r[5])
        for r in conn.execute("SELECT id, name, period_months, price_cents, currency, grace_days FROM plans")
    }
    assignments = [
        Assignment(r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT subscription_id, device_id, assigned_at, released_at FROM subscription_devices"
            " WHERE released_at IS NULL AND subscription_id = ANY(%s)",
            (ids,),
        )
    ]
    sent = {
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT subscription_id, period_end, offset_days, channel FROM reminder_items"
            " WHERE subscription_id = ANY(%s)",
            (ids,),
        )
    }
    return ScheduleState(subs, customers, plans, assignments, sent)


def queue_due(
    conn: psycopg.Connection, now: datetime, offsets: Sequence[int] = DEFAULT_OFFSETS,
    send_time: time = DEFAULT_SEND_TIME,
) -> tuple[int, datetime | None]:  # fmt: skip
    """Queue every reminder and overdue notice due at `now`. Returns how many messages were queued
    and the next moment something may come due (the scheduler's timer)."""
    horizon = max((o for o in offsets if o >= 0), default=0)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEDULER_LOCK,))
        state = load_state(conn, now, horizon)
        messages = schedule(
            state.subscriptions, state.customers, state.plans, state.assignments, state.sent, now, offsets, send_time
        )
        queued = insert_messages(conn, messages, now)
    return queued, next_due(state.subscriptions, now, offsets, send_time)


def insert_messages(conn: psycopg.Connection, messages: Sequence[Message], now: datetime) -> int:
    """The outbox rows and reminder_items of `messages` (call inside a transaction)."""
    if not messages:
        return 0
    rendered = [render_message(m) for m in messages]
    rows = conn.execute(
        "INSERT INTO outbox (idempotency_key, kind, channel, customer_id, recipient, subject, body_text, body_html,"
        " next_at, created_at)"
        " SELECT k, kind, ch, cid, rcpt, subj, txt, html, %s, %s"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[])"
        "   AS t(k, kind, ch, cid, rcpt, subj, txt, html)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
        (
            now, now, [m.idempotency_key for m in messages], [m.kind for m in messages],
            [str(m.channel) for m in messages], [m.customer.id for m in messages], [m.recipient for m in messages],
            [r.subject for r in rendered], [r.body_text for r in rendered], [r.body_html for r in rendered],
        ),
    ).fetchall()  # fmt: skip
    ids = {key: outbox_id for outbox_id, key in rows}
    items = [(item, ids[m.idempotency_key], m.customer.id) for m in messages if m.idempotency_key in ids
             for item in m.items]  # fmt: skip
    if items:
        conn.execute(
            "INSERT INTO reminder_items (subscription_id, period_end, offset_days, channel, customer_id, outbox_id)"
            " SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::int[], %s::text[], %s::uuid[], %s::bigint[])",
            (
                [i[0][0] for i in items], [i[0][1] for i in items], [i[0][2] for i in items],
                [str(i[0][3]) for i in items], [i[2] for i in items], [i[1] for i in items],
            ),
        )  # fmt: skip
        conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return len(rows)
