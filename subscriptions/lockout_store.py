"""What the lockout engine reads and writes: the policy's inputs for many subscriptions in a few
queries, and its decisions stored with their commands in one transaction.

Idempotency: a device's decisions form a chain, each naming the one before it in its `transition`
(`lock@0`, `unlock@17`, `lock@18`, ...). Two engines that evaluate the same device from the same
stored state build the same transition, and the UNIQUE (subscription_id, device_id, transition) key
lets only one of them insert it: only the inserted decisions get a command, in the same transaction,
so every lock and unlock is issued exactly once, across restarts and with several engines running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
import redis

from commands.issue import WAKE_CHANNEL, CommandRefused, CommandRequest, issue_many
from commands.model import Action, Rules
from kernel.livestate import VEHICLES_KEY
from subscriptions.model import Channel, Customer, Plan, Subscription
from subscriptions.policy import DeviceView, Notices
from subscriptions.store import _SUB_COLUMNS, _subscription

ENGINE = "lockout"


@dataclass(frozen=True, slots=True)
class LastDecision:
    id: int
    subscription_id: UUID
    desired: str  # lock or unlock
    command_state: str | None = None  # its command's state (None: no command, refused)
    command_expires: datetime | None = None


@dataclass(slots=True)
class Context:
    """Everything the policy needs for a set of subscriptions, read at one moment."""

    subscriptions: dict[UUID, Subscription] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    customers: dict[UUID, Customer] = field(default_factory=dict)
    devices: dict[UUID, list[DeviceView]] = field(default_factory=dict)
    notices: dict[UUID, Notices] = field(default_factory=dict)
    last: dict[str, LastDecision] = field(default_factory=dict)  # device → its latest lock or unlock


@dataclass(frozen=True, slots=True)
class NewDecision:
    subscription_id: UUID
    device_id: str
    transition: str
    desired: str
    reason: str
    due_at: datetime | None
    command_reason: str = ""  # lock: subscription_expired | payment_overdue; unlock: renewed


@dataclass(frozen=True, slots=True)
class OverdueNotice:
    subscription_id: UUID
    customer: Customer
    channel: Channel
    anchor: datetime
    text: str


def overdue_key(subscription_id: UUID, anchor: datetime, channel: Channel) -> str:
    """The outbox idempotency key of an overdue notice: once per subscription, cause anchor and channel."""
    return f"overdue:{subscription_id}:{int(anchor.timestamp())}:{channel}"


def all_ids(conn: psycopg.Connection) -> list[UUID]:
    return [r[0] for r in conn.execute("SELECT id FROM subscriptions ORDER BY period_end").fetchall()]


def ids_of_customers(conn: psycopg.Connection, customer_ids: Sequence[str]) -> list[UUID]:
    rows = conn.execute("SELECT id FROM subscriptions WHERE customer_id = ANY(%s::uuid[])", (list(customer_ids),))
    return [r[0] for r in rows.fetchall()]


def load(
    conn: psycopg.Connection, client: redis.Redis | None, ids: Sequence[UUID], now: datetime, rules: Rules
) -> Context:
    ctx = Context()
    keys = [str(i) for i in ids]
    for row in conn.execute(f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = ANY(%s::uuid[])", (keys,)):
        ctx.subscriptions[row[0]] = _subscription(row)
    if not ctx.subscriptions:
        return ctx
    rows = conn.execute("SELECT id, name, period_months, price_cents, currency, grace_days FROM plans").fetchall()
    ctx.plans = {r[0]: Plan(*r) for r in rows}
    customer_ids = list({str(s.customer_id) for s in ctx.subscriptions.values()})
    for r in conn.execute(
        "SELECT id, name, email, phone, locale, external_ref FROM customers WHERE id = ANY(%s::uuid[])", (customer_ids,)
    ):
        ctx.customers[r[0]] = Customer(*r)
    pairs = conn.execute(
        "SELECT subscription_id, device_id FROM subscription_devices WHERE released_at IS NULL"
        " AND subscription_id = ANY(%s::uuid[]) ORDER BY device_id",
        (keys,),
    ).fetchall()
    device_ids = [d for _, d in pairs]
    exempt = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            "SELECT DISTINCT ON (device_id) device_id, until, reason FROM exemptions"
            " WHERE device_id = ANY(%s) AND until > %s ORDER BY device_id, until DESC",
            (device_ids, now),
        )
    }
    moving = _moving(client, device_ids, rules)
    for sid, device in pairs:
        until, why = exempt.get(device, (None, ""))
        ctx.devices.setdefault(sid, []).append(DeviceView(device, until, why, device in moving))
    ctx.notices = _notices(conn, ctx.subscriptions, keys)
    for r in conn.execute(
        "SELECT l.device_id, l.id, l.subscription_id, l.desired, c.state, c.expires_at FROM"
        " (SELECT DISTINCT ON (device_id) device_id, id, subscription_id, desired, command_id FROM lockout_decisions"
        "  WHERE device_id = ANY(%s) AND desired <> 'none' ORDER BY device_id, id DESC) l"
        " LEFT JOIN commands c ON c.id = l.command_id",
        (device_ids,),
    ):
        ctx.last[r[0]] = LastDecision(r[1], r[2], r[3], r[4], r[5])
    return ctx


def _notices(conn: psycopg.Connection, subs: dict[UUID, Subscription], keys: list[str]) -> dict[UUID, Notices]:
    """Reminders sent for the current period end, and overdue notices sent for its anchors."""
    expiry: dict[UUID, dict[Channel, datetime]] = {}
    unpaid: dict[UUID, dict[Channel, datetime]] = {}
    for sid, period_end, channel, sent_at in conn.execute(
        "SELECT ri.subscription_id, ri.period_end, ri.channel, min(o.sent_at) FROM reminder_items ri"
        " JOIN outbox o ON o.id = ri.outbox_id WHERE o.state = 'sent' AND o.sent_at IS NOT NULL"
        " AND ri.subscription_id = ANY(%s::uuid[]) GROUP BY 1, 2, 3",
        (keys,),
    ):
        if subs[sid].period_end == period_end:
            _earliest(expiry.setdefault(sid, {}), Channel(channel), sent_at)
    for key, channel, sent_at in conn.execute(
        "SELECT idempotency_key, channel, sent_at FROM outbox WHERE kind = 'overdue' AND state = 'sent'"
        " AND sent_at IS NOT NULL AND split_part(idempotency_key, ':', 2) = ANY(%s)",
        (keys,),
    ):
        _, sid_text, epoch, _ = key.split(":")
        sub = subs[UUID(sid_text)]
        if int(epoch) == int(sub.period_end.timestamp()):
            _earliest(expiry.setdefault(sub.id, {}), Channel(channel), sent_at)
        elif sub.payment_due is not None and int(epoch) == int(sub.payment_due.timestamp()):
            _earliest(unpaid.setdefault(sub.id, {}), Channel(channel), sent_at)
    return {sid: Notices(expiry.get(sid, {}), unpaid.get(sid, {})) for sid in subs}


def _earliest(found: dict[Channel, datetime], channel: Channel, at: datetime) -> None:
    if channel not in found or at < found[channel]:
        found[channel] = at


def _moving(client: redis.Redis | None, device_ids: list[str], rules: Rules) -> set[str]:
    if client is None or not device_ids:
        return set()
    moving = set()
    for device, raw in zip(device_ids, client.hmget(VEHICLES_KEY, device_ids), strict=True):
        try:
            state = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            continue
        speed = state.get("speed_kmh") if isinstance(state, dict) else None
        if isinstance(speed, int | float) and speed > rules.park_speed_kmh:
            moving.add(device)
    return moving


def act(
    conn: psycopg.Connection, client: redis.Redis, decisions: Sequence[NewDecision], notices: Sequence[OverdueNotice],
    statuses: Sequence[tuple[UUID, int, Any]], rules: Rules, now: datetime,
) -> list[tuple[NewDecision, str | None]]:  # fmt: skip
    """Store the decisions not stored yet, issue their commands, queue notices, move statuses: one
    transaction. Returns the decisions this call stored, each with its command id (None: none or refused)."""
    from subscriptions.store import set_status

    ordered = sorted(decisions, key=lambda d: (str(d.subscription_id), d.device_id, d.transition))
    with conn.transaction():
        won = _insert(conn, ordered, now)
        mine = [d for d in ordered if (str(d.subscription_id), d.device_id, d.transition) in won]
        acting = [d for d in mine if d.desired in ("lock", "unlock")]
        reqs = [
            CommandRequest(d.device_id, Action(d.desired), ENGINE, d.command_reason,
                           idempotency_key=f"lockout:{d.subscription_id}:{d.transition}")
            for d in acting
        ]  # fmt: skip
        results = issue_many(conn, client, reqs, rules, now) if reqs else []
        commands: dict[tuple[str, str, str], str | None] = {}
        refused: dict[tuple[str, str, str], str] = {}
        for d, result in zip(acting, results, strict=True):
            k = (str(d.subscription_id), d.device_id, d.transition)
            if isinstance(result, CommandRefused):
                refused[k] = f"; command refused: {result.reason}"
            else:
                commands[k] = result.command.id
        if acting:
            keys = [(str(d.subscription_id), d.device_id, d.transition) for d in acting]
            rows = [(*k, commands.get(k), refused.get(k, "")) for k in keys]
            conn.execute(
                "UPDATE lockout_decisions l SET command_id = u.cmd, reason = l.reason || u.extra FROM unnest("
                " %s::uuid[], %s::text[], %s::text[], %s::uuid[], %s::text[]) AS u(sid, dev, tr, cmd, extra)"
                " WHERE l.subscription_id = u.sid AND l.device_id = u.dev AND l.transition = u.tr",
                [list(c) for c in zip(*rows, strict=True)],
            )
        _queue(conn, notices, now)
        set_status(conn, statuses, now)
    if commands:  # the command service loads them now that they are committed
        pipe = client.pipeline(transaction=False)
        for command_id in commands.values():
            pipe.publish(WAKE_CHANNEL, command_id or "")
        with contextlib.suppress(redis.RedisError):  # it finds them on its next resync
            pipe.execute()
    return [(d, commands.get((str(d.subscription_id), d.device_id, d.transition))) for d in mine]


def _insert(conn: psycopg.Connection, ordered: Sequence[NewDecision], now: datetime) -> set[tuple[str, str, str]]:
    if not ordered:
        return set()
    rows = conn.execute(
        "INSERT INTO lockout_decisions (subscription_id, device_id, transition, desired, reason, decided_at, due_at)"
        " SELECT sid, dev, tr, des, why, %s, due FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::timestamptz[]) WITH ORDINALITY AS u(sid, dev, tr, des, why, due, n) ORDER BY n"
        " ON CONFLICT (subscription_id, device_id, transition) DO NOTHING"
        " RETURNING subscription_id::text, device_id, transition",
        (now, [str(d.subscription_id) for d in ordered], [d.device_id for d in ordered],
         [d.transition for d in ordered], [d.desired for d in ordered], [d.reason for d in ordered],
         [d.due_at for d in ordered]),
    ).fetchall()  # fmt: skip
    return {(r[0], r[1], r[2]) for r in rows}


def _queue(conn: psycopg.Connection, notices: Sequence[OverdueNotice], now: datetime) -> None:
    """Overdue notices into the outbox (the sender delivers them); a key already there is kept."""
    rows = []
    for n in notices:
        recipient = n.customer.email if n.channel is Channel.EMAIL else n.customer.phone
        if recipient:
            subject = "Your subscription: service will be interrupted" if n.channel is Channel.EMAIL else ""
            rows.append((overdue_key(n.subscription_id, n.anchor, n.channel), str(n.channel), n.customer.id,
                         recipient, subject, n.text, now, now))  # fmt: skip
    if rows:
        conn.cursor().executemany(
            "INSERT INTO outbox (idempotency_key, kind, channel, customer_id, recipient, subject, body_text, next_at,"
            " created_at) VALUES (%s, 'overdue', %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            rows,
        )


def device_summary(conn: psycopg.Connection, device_id: str) -> dict[str, Any] | None:
    """The device's subscription and its latest lockout decisions, for the API and the map page."""
    row = conn.execute(
        f"SELECT {', '.join('s.' + c.strip() for c in _SUB_COLUMNS.split(','))}, d.assigned_at"
        " FROM subscription_devices d JOIN subscriptions s ON s.id = d.subscription_id"
        " WHERE d.device_id = %s AND d.released_at IS NULL",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    decisions = conn.execute(
        "SELECT desired, reason, transition, decided_at, command_id::text FROM lockout_decisions"
        " WHERE device_id = %s ORDER BY id DESC LIMIT 5",
        (device_id,),
    ).fetchall()
    return {"subscription": _subscription(row[:-1]), "assigned_at": row[-1], "decisions": decisions}
