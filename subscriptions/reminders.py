"""The reminder schedule: which messages to queue now, as a pure function of the stored state.

A subscription ending on day E (its `period_end` in UTC) is reminded on the days E - offset for each
configured offset (15, 10, 5, 1 and 0 by default), at `send_time` UTC on that day. Days are UTC days
for every customer: the schema keeps no customer time zone, and a reminder a few hours early or late
in the customer's evening changes nothing that matters, while one rule for everyone keeps the
scheduler's single timer simple.

Rules, each a hypothesis property in tests/unit/subscriptions/test_reminders.py:

- Never twice: an item is (subscription, period end, offset, channel), and an item that was queued
  before (`sent`) is never produced again.
- Only the latest due offset: of the offsets whose moment has passed, only the smallest (the most
  recent) is a candidate; older ones that were missed (the sender was down) are dropped, never sent
  in a burst.
- Nothing after a renewal: items name the period end they were made for; a renewed subscription has
  a new period end, so its old items match nothing, and its next reminder is the new period's.
- Nothing after the end day, nothing for a canceled or expired subscription.

Overdue notices (kind `overdue`) go to subscriptions with an unpaid invoice past `payment_due`,
once per period and channel (offset `OVERDUE_OFFSET`); the lockout policy counts them as notice.

Messages are grouped per customer, day, kind and channel: one email listing every device due, one SMS.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID

from subscriptions.model import Assignment, Channel, Customer, PaymentState, Plan, Status, Subscription

DEFAULT_OFFSETS = (15, 10, 5, 1, 0)
DEFAULT_SEND_TIME = time(9, 0)
OVERDUE_OFFSET = -1  # reminder_items.offset_days of an overdue notice
REMINDED = frozenset({Status.TRIALING, Status.ACTIVE, Status.PAST_DUE, Status.GRACE})
OVERDUE = frozenset({PaymentState.DUE, PaymentState.FAILED})

ItemKey = tuple[UUID, datetime, int, Channel]
"""(subscription, period end, offset days, channel): the unique key of reminder_items."""


@dataclass(frozen=True, slots=True)
class Line:
    """One row of a message's table: a device (or the subscription itself when it has none)."""

    subscription_id: UUID
    device_id: str
    plan_name: str
    period_end: datetime
    days_left: int


@dataclass(frozen=True, slots=True)
class Message:
    """One message to queue: its outbox row (rendered later) and the items it covers."""

    kind: str  # 'reminder' or 'overdue'
    customer: Customer
    channel: Channel
    day: date
    lines: tuple[Line, ...]
    items: tuple[ItemKey, ...]

    @property
    def idempotency_key(self) -> str:
        """Customer, day, kind, channel and the items covered: the same message queued twice is one row,
        while a subscription added later the same day makes a message of its own."""
        digest = hashlib.sha256(
            "|".join(f"{s}/{e.isoformat()}/{o}" for s, e, o, _c in sorted(self.items, key=str)).encode()
        ).hexdigest()[:16]
        return f"{self.kind}:{self.customer.id}:{self.day.isoformat()}:{self.channel}:{digest}"

    @property
    def recipient(self) -> str:
        found = self.customer.email if self.channel is Channel.EMAIL else self.customer.phone
        return found or ""


def due_at(period_end: datetime, offset: int, send_time: time = DEFAULT_SEND_TIME) -> datetime:
    """The moment the reminder `offset` days before `period_end` is due."""
    day = period_end.astimezone(UTC).date() - timedelta(days=offset)
    return datetime.combine(day, send_time, UTC)


def latest_due_offset(
    period_end: datetime, offsets: Sequence[int], now: datetime, send_time: time = DEFAULT_SEND_TIME
) -> int | None:
    """The smallest offset whose moment has come, or None (none yet, or the end day is over)."""
    if now.astimezone(UTC).date() > period_end.astimezone(UTC).date():
        return None
    due = [o for o in offsets if o >= 0 and due_at(period_end, o, send_time) <= now]
    return min(due) if due else None


def days_left(period_end: datetime, now: datetime) -> int:
    return (period_end.astimezone(UTC).date() - now.astimezone(UTC).date()).days


def schedule(
    subscriptions: Iterable[Subscription],
    customers: Mapping[UUID, Customer],
    plans: Mapping[str, Plan],
    assignments: Iterable[Assignment],
    sent: set[ItemKey] | frozenset[ItemKey],
    now: datetime,
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    send_time: time = DEFAULT_SEND_TIME,
) -> list[Message]:
    """Every message to queue at `now`: reminders and overdue notices, grouped per customer and day."""
    devices: dict[UUID, list[str]] = defaultdict(list)
    for a in assignments:
        if a.released_at is None or a.released_at > now:
            devices[a.subscription_id].append(a.device_id)
    groups: dict[tuple[str, UUID, Channel], tuple[list[Line], list[ItemKey]]] = {}
    today = now.astimezone(UTC).date()
    for sub in subscriptions:
        customer = customers.get(sub.customer_id)
        if customer is None or sub.canceled_at is not None:
            continue
        wanted = _wanted(sub, offsets, now, send_time)
        if wanted is None:
            continue
        kind, offset = wanted
        plan = plans.get(sub.plan_id)
        lines = [
            Line(sub.id, device, plan.name if plan else sub.plan_id, sub.period_end, days_left(sub.period_end, now))
            for device in sorted(devices.get(sub.id) or [""])
        ]
        for channel in sorted(customer.channels):
            key = (sub.id, sub.period_end, offset, channel)
            if key in sent:
                continue
            group_lines, group_items = groups.setdefault((kind, customer.id, channel), ([], []))
            group_lines.extend(lines)
            group_items.append(key)
    return [
        Message(kind, customers[cid], channel, today, tuple(sorted(ls, key=_line_order)), tuple(items))
        for (kind, cid, channel), (ls, items) in sorted(groups.items(), key=lambda g: (g[0][0], str(g[0][1]), g[0][2]))
    ]


def _wanted(sub: Subscription, offsets: Sequence[int], now: datetime, send_time: time) -> tuple[str, int] | None:
    if sub.status not in REMINDED:
        return None
    if sub.payment_state in OVERDUE and sub.payment_due is not None and sub.payment_due <= now:
        return "overdue", OVERDUE_OFFSET
    offset = latest_due_offset(sub.period_end, offsets, now, send_time)
    return None if offset is None else ("reminder", offset)


def _line_order(line: Line) -> tuple[datetime, str]:
    return line.period_end, line.device_id


def next_due(
    subscriptions: Iterable[Subscription],
    now: datetime,
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    send_time: time = DEFAULT_SEND_TIME,
) -> datetime | None:
    """The next moment after `now` at which `schedule` may produce something new: the timer's target."""
    best: datetime | None = None
    for sub in subscriptions:
        if sub.status not in REMINDED or sub.canceled_at is not None:
            continue
        moments = [due_at(sub.period_end, o, send_time) for o in offsets if o >= 0]
        if sub.payment_state in OVERDUE and sub.payment_due is not None:
            moments.append(sub.payment_due)
        for moment in moments:
            if moment > now and (best is None or moment < best):
                best = moment
    return best
