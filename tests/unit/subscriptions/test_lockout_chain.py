"""The engine's decision chain: a lock only when the device's last decision is not a lock, an unlock
only when it is, each naming the decision before it (what the unique key deduplicates on)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from subscriptions.engine import _new_decisions
from subscriptions.lockout_store import LastDecision
from subscriptions.model import Channel, PaymentState, Plan, Status, Subscription
from subscriptions.policy import DeviceView, Notices, PolicySettings, decide

T0 = datetime(2027, 1, 31, tzinfo=UTC)
PLAN = Plan("m", "m", 1, 100)
SUB = Subscription(uuid.uuid4(), uuid.uuid4(), "m", Status.ACTIVE, PaymentState.PAID, T0 - timedelta(days=31), T0)
BOTH = frozenset(Channel)
SENT = Notices(expiry={c: T0 - timedelta(days=4) for c in Channel})
BIKES = (DeviceView("bike-1"), DeviceView("bike-2"))


def test_lock_once_then_unlock_after_renewal() -> None:
    out = decide(SUB, PLAN, BIKES, SENT, BOTH, PolicySettings(), T0)
    first = _new_decisions(SUB.id, out, {}, T0)
    assert [(d.device_id, d.transition, d.desired, d.command_reason) for d in first] == [
        ("bike-1", "lock@0", "lock", "subscription_expired"),
        ("bike-2", "lock@0", "lock", "subscription_expired"),
    ]
    assert first[0].due_at == T0
    last = {"bike-1": LastDecision(7, SUB.id, "lock"), "bike-2": LastDecision(8, SUB.id, "lock")}
    assert _new_decisions(SUB.id, out, last, T0) == []  # already locked: nothing again
    later = replace(SUB, period_end=T0 + timedelta(days=28))
    renewed = decide(later, PLAN, BIKES, SENT, BOTH, PolicySettings(), T0)
    unlocks = _new_decisions(SUB.id, renewed, last, T0)
    assert [(d.transition, d.desired, d.command_reason) for d in unlocks] == [
        ("unlock@7", "unlock", "renewed"), ("unlock@8", "unlock", "renewed")]  # fmt: skip
    assert _new_decisions(SUB.id, renewed, {}, T0) == []  # never locked: nothing to unlock


def test_a_held_lock_is_recorded_once_with_its_reason() -> None:
    out = decide(SUB, PLAN, (DeviceView("bike-1"),), Notices(), BOTH, PolicySettings(), T0)
    (held,) = _new_decisions(SUB.id, out, {}, T0)
    assert (
        held.desired == "none" and held.transition.startswith("hold:subscription_expired:") and "notice" in held.reason
    )


def test_a_lock_or_unlock_that_expired_unfinished_is_issued_again() -> None:
    out = decide(SUB, PLAN, BIKES[:1], SENT, BOTH, PolicySettings(), T0 + timedelta(hours=7))
    expired = {"bike-1": LastDecision(7, SUB.id, "lock", "expired", T0 + timedelta(hours=6))}
    (again,) = _new_decisions(SUB.id, out, expired, T0 + timedelta(hours=7))
    assert again.transition == "lock@7" and "issued again" in again.reason
    canceled = {"bike-1": LastDecision(7, SUB.id, "lock", "canceled", T0 + timedelta(hours=6))}
    assert _new_decisions(SUB.id, out, canceled, T0 + timedelta(hours=7)) == []  # a person's choice stands
    renewed = decide(
        replace(SUB, period_end=T0 + timedelta(days=28)), PLAN, BIKES[:1], SENT, BOTH, PolicySettings(), T0
    )
    unlock_lost = {"bike-1": LastDecision(9, SUB.id, "unlock", "failed", T0)}
    assert [d.transition for d in _new_decisions(SUB.id, renewed, unlock_lost, T0)] == ["unlock@9"]
