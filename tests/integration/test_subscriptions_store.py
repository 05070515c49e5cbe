"""The subscription store on the real database: versions, renewals, payments out of order,
assignment history, and the NOTIFY every change sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from subs_harness import PLAN, truncate_subscriptions

from kernel.endpoints import Endpoints
from subscriptions import store
from subscriptions.model import PaymentState, Status

pytestmark = pytest.mark.integration
T = datetime(2027, 1, 31, 9, 30, tzinfo=UTC)


@pytest.fixture
def conn(clean: Endpoints):  # type: ignore[no-untyped-def]
    truncate_subscriptions(clean)
    with psycopg.connect(clean.for_service("api").database_url, autocommit=True) as conn:  # the API's grants
        store.create_plan(conn, PLAN, T)
        yield conn


def test_renew_extends_by_calendar_months_and_bumps_the_version(conn: psycopg.Connection) -> None:
    customer = store.create_customer(conn, "Ada", "ada@example.org", None, T)
    sub = store.create_subscription(conn, customer.id, PLAN.id, T - timedelta(days=31), T)
    assert sub.period_end == datetime(2027, 1, 31 - 31 + 31, 9, 30, tzinfo=UTC) - timedelta(days=31) + timedelta(
        days=31
    )
    within = store.renew(conn, sub.id, sub.period_end - timedelta(days=1))
    assert within.period_end == datetime(2027, 2, 28, 9, 30, tzinfo=UTC) and within.version == sub.version + 1
    late = T + timedelta(days=100)
    lapsed = store.renew(conn, sub.id, late)
    assert lapsed.period_start == late and lapsed.status is Status.ACTIVE
    assert lapsed.period_end == datetime(2027, 6, 11, 9, 30, tzinfo=UTC)  # a whole month from the renewal


def test_a_late_payment_event_never_rolls_back(conn: psycopg.Connection) -> None:
    customer = store.create_customer(conn, "Ada", None, "+4915112345678", T)
    sub = store.create_subscription(conn, customer.id, PLAN.id, T, T)
    paid = store.record_payment(conn, sub.id, True, T, event_at=T + timedelta(minutes=5))
    stale = store.record_payment(conn, sub.id, False, T, event_at=T + timedelta(minutes=1))
    assert stale == paid and stale.payment_state is PaymentState.PAID
    failed = store.record_payment(conn, sub.id, False, T, event_at=T + timedelta(minutes=9), due=T + timedelta(days=3))
    assert failed.payment_state is PaymentState.FAILED and failed.status is Status.PAST_DUE
    assert failed.payment_due == T + timedelta(days=3) and failed.version == paid.version + 1
    with pytest.raises(store.SubscriptionError) as refused:
        store.renew(conn, sub.id.__class__(int=0), T)
    assert refused.value.status == 404


def test_assignment_history_and_notify(conn: psycopg.Connection, clean: Endpoints) -> None:
    customer = store.create_customer(conn, "Ada", "ada@example.org", None, T)
    a = store.create_subscription(conn, customer.id, PLAN.id, T, T)
    b = store.create_subscription(conn, customer.id, PLAN.id, T, T)
    with psycopg.connect(clean.database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {store.CHANNEL}")
        store.assign_device(conn, a.id, "bike-1", T)
        store.assign_device(conn, b.id, "bike-1", T + timedelta(hours=1))
        store.cancel(conn, b.id, T)
        heard = {n.payload for n in listener.notifies(timeout=1.0, stop_after=10)}
    assert heard == {str(a.id), str(b.id)}
    assert store.subscription_of(conn, "bike-1") == b.id
    history = store.devices_of(conn, a.id)
    assert len(history) == 1 and history[0].released_at == T + timedelta(hours=1)
