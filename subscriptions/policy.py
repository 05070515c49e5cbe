"""The lockout policy: whether a subscription's devices should be locked now, why, and until when (pure).

Defaults follow New Jersey's starter-interrupt rules (docs/subscriptions.md):
- lock only past the end, or unpaid past the due date, plus the plan's grace days;
- only after notice went out at least 72 hours before, by two channels where the customer has both;
- never while the vehicle is driven: the lock is issued without `force`, so the command service
  holds it in `waiting_for_park` until the vehicle has stood still (commands/lifecycle.py).

`decide` returns per device the desired state (`lock`, `unlock`, or `none`: leave as it is), the
reason, and `next_change`: the earliest time the answer can change without an outside event (a
renewal, a payment, a notice sent, an exemption), None when only such an event can change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from subscriptions.model import Channel, PaymentState, Plan, Status, Subscription


class Desired(StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"  # the subscription allows use: a device locked by the policy is released
    NONE = "none"  # leave the device as it is (exempt, or waiting for the notice period)


class Cause(StrEnum):
    """Why a lock is due; the command's reason (commands.model.AUTOMATIC_REASONS)."""

    EXPIRED = "subscription_expired"
    UNPAID = "payment_overdue"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    notice: timedelta = timedelta(hours=72)  # notice must have gone out this long before a lock
    channels: int = 2  # by this many channels, where the customer has that many
    extra_grace: timedelta = timedelta(0)  # added to every plan's grace days (demo and tests: negative never)


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    exempt_until: datetime | None = None  # the latest end of the device's exemptions
    exempt_reason: str = ""
    moving: bool = False  # from the live state: the lock will wait for the park rule


@dataclass(frozen=True, slots=True)
class Notices:
    """Per channel, when a notice for a lock cause went out (the earliest send per channel)."""

    expiry: Mapping[Channel, datetime] = field(default_factory=dict)  # reminders and overdue notices for period_end
    unpaid: Mapping[Channel, datetime] = field(default_factory=dict)  # overdue notices for payment_due


@dataclass(frozen=True, slots=True)
class Due:
    """The lock the subscription owes, whatever the devices: its cause, when, and what notice it needs."""

    cause: Cause
    anchor: datetime  # the period end or the payment due date the lock stems from
    lock_due: datetime  # anchor plus grace
    lock_at: datetime | None  # lock_due, or later when notice went out late; None: notice incomplete
    missing: frozenset[Channel]  # channels still owed a notice (the engine queues overdue notices)
    notify_from: datetime  # when notice becomes urgent (lock_due minus the notice period)


@dataclass(frozen=True, slots=True)
class Decision:
    device_id: str
    desired: Desired
    reason: str
    cause: Cause | None
    next_change: datetime | None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status  # what the stored status should read now
    due: Due | None  # the lock owed (None: the subscription allows use)
    notify: frozenset[Channel]  # notices the engine should queue now
    notify_for: tuple[tuple[datetime, Channel], ...]  # the same, each with the anchor it is about
    decisions: tuple[Decision, ...]
    next_change: datetime | None  # earliest over everything above


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def status_at(sub: Subscription, plan: Plan, settings: PolicySettings, now: datetime) -> Status:
    if sub.status is Status.CANCELED:
        return Status.CANCELED
    grace = timedelta(days=plan.grace_days) + settings.extra_grace
    unpaid = sub.payment_state is not PaymentState.PAID and sub.payment_due is not None
    if now >= sub.period_end + grace or (unpaid and sub.payment_due is not None and now >= sub.payment_due + grace):
        return Status.EXPIRED
    if now >= sub.period_end:
        return Status.GRACE
    if unpaid and sub.payment_due is not None and now >= sub.payment_due:
        return Status.PAST_DUE
    if sub.payment_state is PaymentState.FAILED:
        return Status.PAST_DUE
    return Status.TRIALING if sub.status is Status.TRIALING else Status.ACTIVE


def _causes(sub: Subscription, plan: Plan, settings: PolicySettings) -> list[tuple[Cause, datetime, datetime]]:
    grace = timedelta(days=plan.grace_days) + settings.extra_grace
    # a canceled subscription runs to the end of what was paid for, without grace days
    end_grace = timedelta(0) if sub.status is Status.CANCELED else grace
    causes = [(Cause.EXPIRED, sub.period_end, sub.period_end + end_grace)]
    if sub.payment_state is not PaymentState.PAID and sub.payment_due is not None:
        causes.append((Cause.UNPAID, sub.payment_due, sub.payment_due + grace))
    return causes


def dues(
    sub: Subscription, plan: Plan, notices: Notices, channels: frozenset[Channel], settings: PolicySettings
) -> list[Due]:
    """The locks the subscription can owe (its end; an unpaid invoice), each with the notice it needs."""
    options = []
    for cause, anchor, due in _causes(sub, plan, settings):
        sent = notices.expiry if cause is Cause.EXPIRED else notices.unpaid
        need = min(settings.channels, len(channels))
        times = sorted(t for c, t in sent.items() if c in channels)
        missing = frozenset(c for c in channels if c not in sent) if len(times) < need else frozenset()
        if need == 0:
            lock_at: datetime | None = due  # nobody to notify: nothing can be sent (docs/subscriptions.md)
        elif len(times) < need:
            lock_at = None
        else:
            lock_at = max(due, times[need - 1] + settings.notice)
        options.append(Due(cause, anchor, due, lock_at, missing, due - settings.notice))
    return options


def decide(
    sub: Subscription, plan: Plan, devices: tuple[DeviceView, ...], notices: Notices, channels: frozenset[Channel],
    settings: PolicySettings, now: datetime,
) -> Outcome:  # fmt: skip
    options = dues(sub, plan, notices, channels, settings)
    status = status_at(sub, plan, settings, now)
    boundaries = [t for t in _boundaries(sub, plan, settings) if t > now]
    notify_for: list[tuple[datetime, Channel]] = []
    for d in options:
        if d.missing and now >= d.notify_from:
            notify_for += [(d.anchor, c) for c in sorted(d.missing)]
        elif d.missing:
            boundaries.append(d.notify_from)
    notify = frozenset(c for _, c in notify_for)
    owed = [d for d in options if now >= d.lock_due]
    if not owed:
        first = min(options, key=lambda d: d.lock_due)
        reason = _allowed_reason(sub, status, first)
        nxt = min(boundaries, default=None)
        decisions = tuple(Decision(d.device_id, Desired.UNLOCK, reason, None, nxt) for d in devices)
        return Outcome(status, None, notify, tuple(notify_for), decisions, nxt)
    # of the locks owed, the one that can fire first (a lock whose notice is complete before one that waits)
    due = min(owed, key=lambda d: (d.lock_at is None, d.lock_at or d.lock_due, d.cause))
    for d in owed:
        if d.lock_at is not None and now < d.lock_at:
            boundaries.append(d.lock_at)
    decisions = tuple(_locking(d, due, now) for d in devices)
    nexts = [d.next_change for d in decisions if d.next_change is not None] + boundaries
    return Outcome(status, due, notify, tuple(notify_for), decisions, min(nexts, default=None))


def _boundaries(sub: Subscription, plan: Plan, settings: PolicySettings) -> list[datetime]:
    """Times the status changes by itself."""
    grace = timedelta(days=plan.grace_days) + settings.extra_grace
    found = [sub.period_end, sub.period_end + grace]
    if sub.payment_due is not None and sub.payment_state is not PaymentState.PAID:
        found += [sub.payment_due, sub.payment_due + grace]
    return found


def _allowed_reason(sub: Subscription, status: Status, due: Due) -> str:
    if status is Status.GRACE:
        return f"in grace: ended {_iso(sub.period_end)}, locks from {_iso(due.lock_due)} unless renewed"
    if status is Status.PAST_DUE:
        return f"payment {sub.payment_state}: locks from {_iso(due.lock_due)} unless paid"
    return f"{status} until {_iso(sub.period_end)}"


def _locking(device: DeviceView, due: Due, now: datetime) -> Decision:
    """A device of a subscription whose lock is due."""
    what = "expired" if due.cause is Cause.EXPIRED else "unpaid since"
    if device.exempt_until is not None and now < device.exempt_until:
        reason = f"exempt until {_iso(device.exempt_until)} ({device.exempt_reason}); {what} {_iso(due.anchor)}"
        return Decision(device.device_id, Desired.NONE, reason, due.cause, device.exempt_until)
    if due.lock_at is None:
        missing = "+".join(sorted(due.missing))
        reason = f"{what} {_iso(due.anchor)}: lock waits for notice by {missing}"
        return Decision(device.device_id, Desired.NONE, reason, due.cause, None)
    if now < due.lock_at:
        reason = f"{what} {_iso(due.anchor)}: lock waits for the notice period, until {_iso(due.lock_at)}"
        return Decision(device.device_id, Desired.NONE, reason, due.cause, due.lock_at)
    reason = f"{what} {_iso(due.anchor)}, grace ended {_iso(due.lock_due)}, notice given"
    if device.moving:
        reason += "; vehicle moving: the lock waits until it parks"
    return Decision(device.device_id, Desired.LOCK, reason, due.cause, None)
