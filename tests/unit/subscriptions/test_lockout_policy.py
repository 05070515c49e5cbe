"""The lockout policy: examples for each rule, then properties over random subscriptions and times."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.model import Channel, PaymentState, Plan, Status, Subscription
from subscriptions.periods import add_months
from subscriptions.policy import Desired, DeviceView, Notices, PolicySettings, decide, status_at

T0 = datetime(2027, 1, 31, 0, 0, tzinfo=UTC)
PLAN = Plan("courier-monthly", "Courier monthly", 1, 4900, grace_days=3)
BOTH = frozenset({Channel.EMAIL, Channel.SMS})
DEFAULTS = PolicySettings()
SUB = Subscription(uuid.uuid4(), uuid.uuid4(), PLAN.id, Status.ACTIVE, PaymentState.PAID,
                   period_start=add_months(T0, -1), period_end=T0)  # fmt: skip
BIKE = (DeviceView("bike-1"),)
NOTIFIED = Notices(expiry={Channel.EMAIL: T0 - timedelta(days=5), Channel.SMS: T0 - timedelta(days=5)})


def _desired(outcome) -> list[Desired]:  # type: ignore[no-untyped-def]
    return [d.desired for d in outcome.decisions]


def test_active_then_grace_then_lock_at_end_plus_grace() -> None:
    before = decide(SUB, PLAN, BIKE, NOTIFIED, BOTH, DEFAULTS, T0 - timedelta(hours=1))
    assert _desired(before) == [Desired.UNLOCK] and before.status is Status.ACTIVE and before.next_change == T0
    grace = decide(SUB, PLAN, BIKE, NOTIFIED, BOTH, DEFAULTS, T0 + timedelta(days=1))
    assert _desired(grace) == [Desired.UNLOCK] and grace.status is Status.GRACE
    assert grace.next_change == T0 + timedelta(days=3)
    after = decide(SUB, PLAN, BIKE, NOTIFIED, BOTH, DEFAULTS, T0 + timedelta(days=3))
    assert _desired(after) == [Desired.LOCK] and after.status is Status.EXPIRED
    assert after.decisions[0].cause == "subscription_expired" and "notice given" in after.decisions[0].reason


def test_no_lock_without_notice_by_both_channels_72h_before() -> None:
    late = T0 + timedelta(days=3)
    one = Notices(expiry={Channel.EMAIL: T0 - timedelta(days=5)})
    waiting = decide(SUB, PLAN, BIKE, one, BOTH, DEFAULTS, late)
    assert _desired(waiting) == [Desired.NONE] and "sms" in waiting.decisions[0].reason
    assert waiting.notify == {Channel.SMS}  # the engine queues an overdue notice by SMS
    sent = Notices(expiry={Channel.EMAIL: T0 - timedelta(days=5), Channel.SMS: late})
    held = decide(SUB, PLAN, BIKE, sent, BOTH, DEFAULTS, late + timedelta(hours=71))
    assert _desired(held) == [Desired.NONE] and held.next_change == late + timedelta(hours=72)
    assert _desired(decide(SUB, PLAN, BIKE, sent, BOTH, DEFAULTS, late + timedelta(hours=72))) == [Desired.LOCK]
    # a customer with only an email address needs only the email
    assert _desired(decide(SUB, PLAN, BIKE, one, frozenset({Channel.EMAIL}), DEFAULTS, late)) == [Desired.LOCK]


def test_exempt_device_left_alone_until_its_exemption_ends() -> None:
    until = T0 + timedelta(days=10)
    devices = (DeviceView("bike-1", until, "in the workshop"), DeviceView("bike-2"))
    out = decide(SUB, PLAN, devices, NOTIFIED, BOTH, DEFAULTS, T0 + timedelta(days=4))
    assert _desired(out) == [Desired.NONE, Desired.LOCK] and "workshop" in out.decisions[0].reason
    assert out.next_change == until


def test_unpaid_past_due_plus_grace_locks_and_payment_unlocks() -> None:
    due = T0 - timedelta(days=20)
    failed = replace(SUB, payment_state=PaymentState.FAILED, payment_due=due, status=Status.PAST_DUE)
    notices = Notices(unpaid={Channel.EMAIL: due - timedelta(days=1), Channel.SMS: due})
    out = decide(failed, PLAN, BIKE, notices, BOTH, DEFAULTS, due + timedelta(days=3))
    assert _desired(out) == [Desired.LOCK] and out.decisions[0].cause == "payment_overdue"
    paid = replace(failed, payment_state=PaymentState.PAID, payment_due=None, status=Status.ACTIVE)
    assert _desired(decide(paid, PLAN, BIKE, notices, BOTH, DEFAULTS, due + timedelta(days=3))) == [Desired.UNLOCK]


def test_moving_vehicle_lock_is_issued_for_the_park_rule() -> None:
    out = decide(SUB, PLAN, (DeviceView("bike-1", moving=True),), NOTIFIED, BOTH, DEFAULTS, T0 + timedelta(days=3))
    assert _desired(out) == [Desired.LOCK] and "parks" in out.decisions[0].reason


def test_canceled_locks_at_the_end_without_grace() -> None:
    canceled = replace(SUB, status=Status.CANCELED, canceled_at=T0 - timedelta(days=9))
    assert _desired(decide(canceled, PLAN, BIKE, NOTIFIED, BOTH, DEFAULTS, T0)) == [Desired.LOCK]


def test_month_arithmetic() -> None:
    assert add_months(datetime(2027, 1, 31, tzinfo=UTC), 1) == datetime(2027, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2028, 2, 29, tzinfo=UTC), 12) == datetime(2029, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2027, 11, 15, 8, tzinfo=UTC), 3) == datetime(2028, 2, 15, 8, tzinfo=UTC)


def test_policy_imports_no_io_library() -> None:
    code = ("import sys, subscriptions.policy, subscriptions.periods, subscriptions.model\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('asyncio', 'redis', 'psycopg', 'paho', 'aiomqtt'))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


# -- properties -----------------------------------------------------------------------------------
hours = st.integers(min_value=-24 * 60, max_value=24 * 60).map(lambda h: timedelta(hours=h))
maybe_time = st.one_of(st.none(), hours.map(lambda d: T0 + d))


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    plan = replace(PLAN, grace_days=draw(st.integers(0, 5)))
    payment = draw(st.sampled_from(list(PaymentState)))
    status = draw(st.sampled_from([Status.ACTIVE, Status.TRIALING, Status.CANCELED, Status.PAST_DUE]))
    due = draw(maybe_time) if payment is not PaymentState.PAID else None
    sub = replace(SUB, status=status, payment_state=payment, payment_due=due)
    channels = draw(st.sampled_from([BOTH, frozenset({Channel.EMAIL}), frozenset({Channel.SMS}), frozenset()]))

    def sent() -> dict[Channel, datetime]:
        return {c: t for c in Channel if (t := draw(maybe_time)) is not None}

    notices = Notices(expiry=sent(), unpaid=sent())
    devices = tuple(
        DeviceView(f"bike-{i}", draw(maybe_time), "x", draw(st.booleans())) for i in range(draw(st.integers(1, 3)))
    )
    policy = PolicySettings(
        notice=timedelta(hours=draw(st.sampled_from([0, 24, 72]))), channels=draw(st.integers(1, 2))
    )
    now = T0 + draw(hours) + timedelta(seconds=draw(st.integers(0, 3599)))
    return sub, plan, devices, notices, channels, policy, now


def _answer(outcome):  # type: ignore[no-untyped-def]
    return outcome.status, outcome.notify, [(d.desired, d.cause) for d in outcome.decisions]


@settings(max_examples=400, deadline=None)
@given(cases())
def test_never_lock_an_exempt_device(case) -> None:  # type: ignore[no-untyped-def]
    sub, plan, devices, notices, channels, policy, now = case
    for device, d in zip(devices, decide(sub, plan, devices, notices, channels, policy, now).decisions, strict=True):
        if device.exempt_until is not None and now < device.exempt_until:
            assert d.desired is not Desired.LOCK


@settings(max_examples=400, deadline=None)
@given(cases())
def test_never_unlock_a_lapsed_subscription(case) -> None:  # type: ignore[no-untyped-def]
    sub, plan, devices, notices, channels, policy, now = case
    out = decide(sub, plan, devices, notices, channels, policy, now)
    grace = timedelta(days=plan.grace_days)
    lapsed = now >= sub.period_end + grace or (sub.payment_due is not None and now >= sub.payment_due + grace)
    if lapsed or status_at(sub, plan, policy, now) is Status.EXPIRED:
        assert Desired.UNLOCK not in _desired(out)
    # a renewal (paid, the end a period later) always allows use again
    renewed = replace(sub, status=Status.ACTIVE, payment_state=PaymentState.PAID, payment_due=None,
                      period_end=add_months(max(now, sub.period_end), 1))  # fmt: skip
    assert set(_desired(decide(renewed, plan, devices, notices, channels, policy, now))) == {Desired.UNLOCK}


@settings(max_examples=400, deadline=None)
@given(cases())
def test_lock_only_after_notice(case) -> None:  # type: ignore[no-untyped-def]
    sub, plan, devices, notices, channels, policy, now = case
    out = decide(sub, plan, devices, notices, channels, policy, now)
    if Desired.LOCK in _desired(out) and channels:
        assert out.due is not None
        sent = notices.expiry if out.due.cause == "subscription_expired" else notices.unpaid
        given_early = [c for c in channels if c in sent and sent[c] + policy.notice <= now]
        assert len(given_early) >= min(policy.channels, len(channels))


@settings(max_examples=400, deadline=None)
@given(cases(), st.floats(0, 1))
def test_idempotent_and_next_change_is_correct(case, fraction: float) -> None:  # type: ignore[no-untyped-def]
    sub, plan, devices, notices, channels, policy, now = case
    out = decide(sub, plan, devices, notices, channels, policy, now)
    assert out == decide(sub, plan, devices, notices, channels, policy, now)
    if out.next_change is None:
        later = now + timedelta(days=400)
        assert _answer(decide(sub, plan, devices, notices, channels, policy, later)) == _answer(out)
        return
    assert out.next_change > now
    just_before = out.next_change - timedelta(microseconds=1)
    between = now + (just_before - now) * fraction
    for t in (just_before, between):
        assert _answer(decide(sub, plan, devices, notices, channels, policy, t)) == _answer(out)
