"""The demo fleet's customers and subscriptions: most run for a month, a few end during the demo.

Written as the database owner with fixed ids derived from the device ids, so a second demo run
resets the same rows (new end times) instead of piling up customers. The notice the lockout policy
needs is marked sent at the start (there is no mail server in the demo), and the demo shortens the
notice period (DEMO_NOTICE_HOURS), which it says on screen.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import psycopg

from subscriptions.lockout_store import overdue_key
from subscriptions.model import Channel
from subscriptions.store import notify

DEMO_NOTICE_HOURS = "0.0167"  # one minute instead of 72 hours
ENDING_IN = (timedelta(minutes=3), timedelta(minutes=5), timedelta(minutes=8))  # the first few devices
PLAN = "courier-monthly"
_NS = uuid.UUID("6f1c9a52-3e0b-4d7e-9a55-0c2b1d4e8f10")


def seed_demo(
    database_url: str, device_ids: Sequence[str], ending: Sequence[str], now: datetime
) -> dict[str, datetime]:
    """Every device on a subscription of its own; `ending` (in order) end ENDING_IN from now.
    Returns device → end for those."""
    ends = {d: now + ENDING_IN[i % len(ENDING_IN)] for i, d in enumerate(ending)}
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO plans (id, name, period_months, price_cents, grace_days, created_at)"
            " VALUES (%s, 'Courier monthly', 1, 4900, 0, %s) ON CONFLICT (id) DO NOTHING",
            (PLAN, now),
        )
        subs = []
        for i, device in enumerate(device_ids):
            cid, sid = uuid.uuid5(_NS, f"customer:{device}"), uuid.uuid5(_NS, f"subscription:{device}")
            end = ends.get(device, now + timedelta(days=30 - i % 20))
            conn.execute(
                "INSERT INTO customers (id, external_ref, name, email, phone, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (cid, f"demo-{device}", f"Courier {i + 1}", f"courier{i + 1}@example.org", "+4915100000000", now, now),
            )
            conn.execute(
                "INSERT INTO subscriptions (id, external_ref, customer_id, plan_id, status, payment_state,"
                " period_start,"
                " period_end, created_at, updated_at) VALUES (%s, %s, %s, %s, 'active', 'paid', %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET status = 'active', payment_state = 'paid', payment_due = NULL,"
                " canceled_at = NULL, period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,"
                " version = subscriptions.version + 1, updated_at = EXCLUDED.updated_at",
                (sid, f"demo-{device}", cid, PLAN, end - timedelta(days=30), end, now, now),
            )
            conn.execute(
                "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at) SELECT %s, %s, %s"
                " WHERE NOT EXISTS (SELECT 1 FROM subscription_devices WHERE device_id = %s AND released_at IS NULL)",
                (sid, device, now, device),
            )
            if device in ends:
                for channel in Channel:
                    conn.execute(
                        "INSERT INTO outbox (idempotency_key, kind, channel, customer_id, recipient, body_text, state,"
                        " next_at, created_at, sent_at) VALUES (%s, 'overdue', %s, %s, 'demo', %s, 'sent', %s, %s, %s)"
                        " ON CONFLICT (idempotency_key) DO NOTHING",
                        (overdue_key(sid, end, channel), str(channel), cid, "demo notice: your subscription ends soon",
                         now, now, now),
                    )  # fmt: skip
            subs.append(sid)
        notify(conn, subs)
    return ends
