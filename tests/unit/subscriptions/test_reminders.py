"""The reminder schedule's properties: never repeated, only the latest due offset, nothing after a renewal."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subscriptions.model import Assignment, Channel, Customer, PaymentState, Plan, Status, Subscription
from subscriptions.reminders import (
    DEFAULT_OFFSETS,
    OVERDUE_OFFSET,
    ItemKey,
    Message,
    due_at,
    latest_due_offset,
    next_due,
    schedule,
)
from subscriptions.render import render_message

T0 = datetime(2027, 3, 1, tzinfo=UTC)
PLAN = Plan("tracker-1y", "Tracker 1 year", 12, 4900)
PLANS = {PLAN.id: PLAN}


def _customer(n: int, email: bool = True, phone: bool = True, locale: str = "en") -> Customer:
    return Customer(UUID(int=n + 1), f"Customer {n}", f"c{n}@example.org" if email else None,
                    f"+4915100{n:04d}" if phone else None, locale)  # fmt: skip


def _sub(n: int, customer: Customer, end: datetime, **kw: object) -> Subscription:
    sub = Subscription(UUID(int=1000 + n), customer.id, PLAN.id, Status.ACTIVE, PaymentState.PAID,
                       end - timedelta(days=365), end)  # fmt: skip
    return replace(sub, **kw)  # type: ignore[arg-type]


fleets = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 40 * 24), st.integers(1, 3)), min_size=1, max_size=12
)  # (customer, end in hours after T0, devices)
steps = st.lists(st.integers(1, 6 * 24), min_size=1, max_size=30)  # hours between two scheduler runs


def _world(fleet: list[tuple[int, int, int]]) -> tuple[list[Subscription], dict[UUID, Customer], list[Assignment]]:
    customers = {c.id: c for c in (_customer(n, email=n != 3, phone=n != 2) for n in range(5))}
    subs, assignments = [], []
    for i, (cn, hours, devices) in enumerate(fleet):
        sub = _sub(i, _customer(cn, email=cn != 3, phone=cn != 2), T0 + timedelta(hours=hours))
        subs.append(sub)
        assignments += [Assignment(sub.id, f"dev-{i}-{d}", T0 - timedelta(days=400)) for d in range(devices)]
    return subs, customers, assignments


def _run(subs: list[Subscription], customers: dict[UUID, Customer], assignments: list[Assignment],
         hours: list[int]) -> list[tuple[datetime, Message]]:  # fmt: skip
    sent: set[ItemKey] = set()
    out = []
    now = T0
    for h in hours:
        now += timedelta(hours=h)
        for m in schedule(subs, customers, PLANS, assignments, sent, now):
            sent.update(m.items)
            out.append((now, m))
    return out


@settings(max_examples=150, deadline=None)
@given(fleets, steps)
def test_no_reminder_is_ever_queued_twice(fleet: list[tuple[int, int, int]], hours: list[int]) -> None:
    subs, customers, assignments = _world(fleet)
    seen: list[ItemKey] = [item for _, m in _run(subs, customers, assignments, hours) for item in m.items]
    assert len(seen) == len(set(seen))


@settings(max_examples=150, deadline=None)
@given(fleets, steps)
def test_only_the_latest_due_offset_goes_out(fleet: list[tuple[int, int, int]], hours: list[int]) -> None:
    subs, customers, assignments = _world(fleet)
    for now, m in _run(subs, customers, assignments, hours):
        for _sub_id, end, offset, _channel in m.items:
            assert due_at(end, offset) <= now, "not yet due"
            newer = [o for o in DEFAULT_OFFSETS if o < offset and due_at(end, o) <= now]
            assert not newer, f"offset {offset} went out at {now} although {newer} were due"
            assert now.date() <= end.date(), "after the end day"


@settings(max_examples=150, deadline=None)
@given(fleets, steps, st.integers(0, 29))
def test_nothing_is_queued_for_a_period_after_its_renewal(
    fleet: list[tuple[int, int, int]], hours: list[int], cut: int
) -> None:
    subs, customers, assignments = _world(fleet)
    cut = min(cut, len(hours) - 1)
    before = _run(subs, customers, assignments, hours[:cut])
    renewed = [replace(s, period_end=s.period_end + timedelta(days=365), version=s.version + 1) for s in subs]
    sent = {item for _, m in before for item in m.items}
    now = T0 + timedelta(hours=sum(hours[:cut]))
    old_ends = {(s.id, s.period_end) for s in subs}
    for h in hours[cut:]:
        now += timedelta(hours=h)
        for m in schedule(renewed, customers, PLANS, assignments, sent, now):
            sent.update(m.items)
            assert not [i for i in m.items if (i[0], i[1]) in old_ends]


def test_after_downtime_one_message_per_customer_and_channel_with_the_latest_offset() -> None:
    c = _customer(1)
    subs = [_sub(i, c, T0 + timedelta(days=3, hours=i)) for i in range(3)]
    assignments = [Assignment(s.id, f"dev-{i}", T0) for i, s in enumerate(subs)]
    # down from before the 15-day reminder until the day before the 1-day reminder: only offset 5 goes out
    messages = schedule(subs, {c.id: c}, PLANS, assignments, set(), T0 + timedelta(hours=12))
    assert sorted(m.channel for m in messages) == [Channel.EMAIL, Channel.SMS]
    for m in messages:
        assert {i[2] for i in m.items} == {5}
        assert [ln.device_id for ln in m.lines] == ["dev-0", "dev-1", "dev-2"]


def test_overdue_notice_once_per_period_and_not_for_a_paid_subscription() -> None:
    c = _customer(1)
    sub = _sub(1, c, T0 + timedelta(days=20), payment_state=PaymentState.FAILED, payment_due=T0)
    first = schedule([sub], {c.id: c}, PLANS, [], set(), T0 + timedelta(hours=1))
    assert {(m.kind, i[2]) for m in first for i in m.items} == {("overdue", OVERDUE_OFFSET)}
    sent = {i for m in first for i in m.items}
    assert schedule([sub], {c.id: c}, PLANS, [], sent, T0 + timedelta(hours=5)) == []
    paid = replace(sub, payment_state=PaymentState.PAID, payment_due=None)
    assert schedule([paid], {c.id: c}, PLANS, [], set(), T0 + timedelta(hours=5)) == []


def test_canceled_and_expired_subscriptions_get_nothing() -> None:
    c = _customer(1)
    now = T0 + timedelta(days=1)
    subs = [_sub(1, c, T0 + timedelta(days=2), status=Status.EXPIRED),
            _sub(2, c, T0 + timedelta(days=2), canceled_at=T0)]  # fmt: skip
    assert schedule(subs, {c.id: c}, PLANS, [], set(), now) == []


def test_next_due_is_the_next_offset_moment() -> None:
    c = _customer(1)
    end = T0 + timedelta(days=30)
    sub = _sub(1, c, end)
    assert next_due([sub], T0) == due_at(end, 15)
    assert next_due([sub], due_at(end, 1)) == due_at(end, 0)
    assert latest_due_offset(end, DEFAULT_OFFSETS, end + timedelta(days=1)) is None


def test_email_has_a_table_row_per_device_with_dates_in_the_customers_locale() -> None:
    c = _customer(1, locale="de-DE")
    end = datetime(2027, 3, 14, tzinfo=UTC)
    sub = _sub(1, c, end)
    assignments = [Assignment(sub.id, name, T0) for name in ("bike <7>", "bike-8")]
    (email, sms) = schedule([sub], {c.id: c}, PLANS, assignments, set(), datetime(2027, 3, 13, 10, tzinfo=UTC))
    rendered = render_message(email)
    assert "<td>bike &lt;7&gt;</td><td>Tracker 1 year</td><td>14.03.2027</td><td>1</td>" in (rendered.body_html or "")
    assert "bike <7> | Tracker 1 year | 14.03.2027 | 1 day left" in rendered.body_text
    text = render_message(sms).body_text
    assert "bike <7>, bike-8" in text and len(text) <= 480


@pytest.mark.parametrize("module", ["subscriptions.reminders", "subscriptions.render", "subscriptions.importer",
                                    "subscriptions.signing"])  # fmt: skip
def test_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'redis', 'psycopg', 'paho'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
