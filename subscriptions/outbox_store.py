"""The outbox as the sender sees it: claim due rows, mark them sent, retried, failed or skipped.

Claiming is `FOR UPDATE SKIP LOCKED` plus a lease: a claimed row is `sending` with `next_at` at the
end of its lease, committed before anything is sent, so two senders never hold the same row. A
sender killed mid-send leaves its rows `sending`; when the lease runs out any sender claims them
again (the at-least-once half of the window, docs/subscriptions.md "Sender").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from subscriptions.render import render_digest

VALID = ("trialing", "active", "past_due", "grace")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    idempotency_key: str
    kind: str
    channel: str
    recipient: str
    subject: str
    body_text: str
    body_html: str | None
    attempts: int  # including this one


def claim(conn: psycopg.Connection, now: datetime, limit: int, lease: timedelta) -> list[OutboxRow]:
    """Up to `limit` due rows, pending or with an expired lease, now `sending` under this caller's lease."""
    rows = conn.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, next_at = %s"
        " WHERE id IN (SELECT id FROM outbox WHERE state IN ('pending', 'sending') AND next_at <= %s"
        "              ORDER BY next_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING id, idempotency_key, kind, channel, recipient, subject, body_text, body_html, attempts",
        (now + lease, now, limit),
    ).fetchall()
    return sorted((OutboxRow(*r) for r in rows), key=lambda r: r.id)


def release(conn: psycopg.Connection, ids: list[int]) -> None:
    """Claimed rows not tried (the sender is stopping): due again at once, this attempt not counted."""
    conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = attempts - 1, next_at = now()"
        " WHERE id = ANY(%s) AND state = 'sending'",
        (ids,),
    )


def mark_sent(conn: psycopg.Connection, row_id: int, now: datetime) -> None:
    conn.execute("UPDATE outbox SET state = 'sent', sent_at = %s, last_error = '' WHERE id = %s", (now, row_id))


def mark_retry(conn: psycopg.Connection, row_id: int, error: str, at: datetime) -> None:
    conn.execute(
        "UPDATE outbox SET state = 'pending', next_at = %s, last_error = %s WHERE id = %s", (at, error[:500], row_id)
    )


def mark_failed(conn: psycopg.Connection, row_id: int, error: str, now: datetime) -> None:
    """Given up: visible in `fleet notify status`, the staff digest and the failed counter."""
    conn.execute(
        "UPDATE outbox SET state = 'failed', next_at = %s, last_error = %s WHERE id = %s", (now, error[:500], row_id)
    )


def stale(conn: psycopg.Connection, row_ids: list[int]) -> dict[int, str]:
    """Of these reminder or overdue rows, those that no longer hold, with why (renewed, canceled, paid).

    Any item whose subscription moved on makes the whole message stale: it is skipped, and its items
    are deleted, so the still-valid subscriptions in it are queued again in a fresh message."""
    found = conn.execute(
        "SELECT i.outbox_id,"
        "       bool_or(s.id IS NULL OR s.period_end <> i.period_end OR s.canceled_at IS NOT NULL"
        "               OR NOT (s.status = ANY(%s))),"
        "       bool_or(i.offset_days < 0 AND s.payment_state = 'paid')"
        " FROM reminder_items i LEFT JOIN subscriptions s ON s.id = i.subscription_id"
        " WHERE i.outbox_id = ANY(%s) GROUP BY i.outbox_id",
        (list(VALID), row_ids),
    ).fetchall()
    why = {}
    for outbox_id, moved, paid in found:
        if moved:
            why[outbox_id] = "renewed or ended before it was sent"
        elif paid:
            why[outbox_id] = "paid before it was sent"
    return why


def skip(conn: psycopg.Connection, row_id: int, reason: str) -> None:
    with conn.transaction():
        conn.execute("UPDATE outbox SET state = 'skipped', last_error = %s WHERE id = %s", (reason, row_id))
        conn.execute("DELETE FROM reminder_items WHERE outbox_id = %s", (row_id,))


def counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def failed_rows(conn: psycopg.Connection, limit: int = 50) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT id, kind, channel, recipient, attempts, last_error, next_at FROM outbox WHERE state = 'failed'"
        " ORDER BY next_at DESC LIMIT %s",
        (limit,),
    )
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def queue_digest(conn: psycopg.Connection, staff: str, now: datetime, since: datetime) -> bool:
    """The staff digest of `now`'s day: devices locked and messages failed since `since`. Once per day."""
    cur = conn.execute(
        "SELECT device_id, subscription_id, reason, decided_at FROM lockout_decisions"
        " WHERE desired = 'lock' AND decided_at >= %s ORDER BY decided_at",
        (since,),
    )
    locked = [dict(zip(("device_id", "subscription_id", "reason", "decided_at"), r, strict=True)) for r in cur]
    cur = conn.execute(
        "SELECT kind, channel, recipient, attempts, last_error FROM outbox"
        " WHERE state = 'failed' AND kind <> 'digest' AND next_at >= %s ORDER BY next_at",
        (since,),
    )
    failed = [dict(zip(("kind", "channel", "recipient", "attempts", "last_error"), r, strict=True)) for r in cur]
    body = render_digest(since, locked, failed)
    row = conn.execute(
        "INSERT INTO outbox (idempotency_key, kind, channel, recipient, subject, body_text, body_html, next_at,"
        " created_at) VALUES (%s, 'digest', 'email', %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        (f"digest:{now.date().isoformat()}", staff, body.subject, body.body_text, body.body_html, now, now),
    ).fetchone()
    return row is not None
