"""Subscriptions on the real database, and a lockout engine in a thread, for the lockout tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from uuid import UUID

import psycopg
from commands_harness import FAST

from commands.model import Rules
from kernel.endpoints import Endpoints
from subscriptions import store
from subscriptions.engine import LockoutEngine
from subscriptions.lockout_store import overdue_key
from subscriptions.model import Channel, Plan, Subscription
from subscriptions.policy import PolicySettings

TABLES = ("lockout_decisions, reminder_items, outbox, exemptions, subscription_devices, subscriptions, customers,"
          " plans, webhook_events, commands, command_transitions, audit_log")  # fmt: skip
PLAN = Plan("courier-monthly", "Courier monthly", 1, 4900, grace_days=0)


def truncate_subscriptions(endpoints: Endpoints) -> None:
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES}")


def add_devices(endpoints: Endpoints, device_ids: Sequence[str]) -> None:
    """Rows in the device registry (what issuing a command checks), without broker accounts."""
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (list(device_ids),))


def subscribe(
    conn: psycopg.Connection, devices: Sequence[str], end: datetime, now: datetime, *, notice_at: datetime | None,
    email: str | None = "c@example.org", phone: str | None = "+4915100000000",
) -> Subscription:  # fmt: skip
    """A customer with a subscription ending at `end` on `devices`; `notice_at`: both channels'
    notices for that end marked sent then (None: no notice)."""
    if store.get_plan(conn, PLAN.id) is None:
        store.create_plan(conn, PLAN, now)
    customer = store.create_customer(conn, f"courier {devices[0]}", email, phone, now)
    sub = store.create_subscription(conn, customer.id, PLAN.id, end - timedelta(days=30), now, end=end)
    store.assign_devices(conn, sub.id, devices, now)
    if notice_at is not None:
        give_notice(conn, [sub.id], end, notice_at, customer.id)
    return sub


def give_notice(conn: psycopg.Connection, subs: Sequence[UUID], anchor: datetime, sent_at: datetime,
                customer_id: UUID | None = None) -> None:  # fmt: skip
    rows = [(overdue_key(s, anchor, c), str(c), customer_id, "x", "notice", sent_at, sent_at, sent_at)
            for s in subs for c in Channel]  # fmt: skip
    conn.cursor().executemany(
        "INSERT INTO outbox (idempotency_key, kind, channel, customer_id, recipient, body_text, state, next_at,"
        " created_at, sent_at) VALUES (%s, 'overdue', %s, %s, %s, %s, 'sent', %s, %s, %s)"
        # the engine may have queued it already (it runs while the test creates subscriptions)
        " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'sent', sent_at = EXCLUDED.sent_at",
        rows,
    )


@contextmanager
def lockout_engine(
    endpoints: Endpoints, policy: PolicySettings | None = None, rules: Rules = FAST
) -> Iterator[LockoutEngine]:
    own = endpoints.for_service("lockout")  # its own database role and Redis user
    stop = threading.Event()
    engine = LockoutEngine(own.database_url, own.redis_url, policy=policy or PolicySettings(), rules=rules)
    thread = threading.Thread(target=engine.run, args=(stop,), name="lockout")
    thread.start()
    try:
        assert engine.wait_ready(15), "lockout engine did not start"
        yield engine
    finally:
        stop.set()
        thread.join(timeout=15)


def commands_for(endpoints: Endpoints, device_ids: Sequence[str] | None = None) -> list[tuple[str, str, datetime, str]]:
    """(device, action, created_at, reason) of every command, oldest first."""
    with psycopg.connect(endpoints.database_url) as conn:
        rows = conn.execute(
            "SELECT device_id, action, created_at, reason FROM commands"
            + (" WHERE device_id = ANY(%s)" if device_ids is not None else "")
            + " ORDER BY created_at, id",
            (list(device_ids),) if device_ids is not None else (),
        ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
