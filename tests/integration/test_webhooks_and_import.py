"""Signed shop webhooks and the bulk import, through the API on the real servers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client
from notify_harness import rows, truncate

from api.app import create_app
from api.deps import ApiConfig
from kernel.endpoints import Endpoints
from subscriptions.signing import HEADER, sign
from subscriptions.store import CHANNEL

pytestmark = pytest.mark.integration

SECRET = b"test-webhook-secret"
IMEI = "490154203237518"


@pytest.fixture
def shop(clean: Endpoints) -> Iterator[tuple[Endpoints, TestClient]]:
    truncate(clean)
    rows(clean, "INSERT INTO plans (id, name, period_months, price_cents, created_at)"
                " VALUES ('tracker-1y', 'Tracker 1 year', 12, 4900, now()) RETURNING id")  # fmt: skip
    own = clean.for_service("api")
    config = ApiConfig(own.database_url, own.redis_url, None, webhook_secret=SECRET)
    with TestClient(create_app(config)) as client:
        yield clean, client


def _post(client: TestClient, path: str, event: dict[str, Any], *, at: float | None = None,
          secret: bytes = SECRET, header: str | None = None) -> Any:  # fmt: skip
    body = json.dumps(event).encode()
    signature = header if header is not None else sign(secret, int(at or time.time()), body)
    return client.post(path, content=body, headers={HEADER: signature, "Content-Type": "application/json"})


def _order(event_id: str, created: datetime, devices: list[str], name: str = "Ann") -> dict[str, Any]:
    return {"id": event_id, "type": "order.completed", "created": created.isoformat(),
            "data": {"order_id": "order-1", "plan": "tracker-1y", "start": "2027-01-31", "devices": devices,
                     "customer": {"ref": "shop-7", "name": name, "email": "ann@example.org", "phone": "+4915112345678",
                                  "locale": "de-DE"}}}  # fmt: skip


def test_unsigned_badly_signed_and_old_requests_are_refused(shop: tuple[Endpoints, TestClient]) -> None:
    endpoints, client = shop
    event = _order("e1", datetime.now(UTC), ["bike-1"])
    assert _post(client, "/v1/webhooks/orders", event, header="").status_code == 401
    assert _post(client, "/v1/webhooks/orders", event, secret=b"wrong").status_code == 401
    old = _post(client, "/v1/webhooks/orders", event, at=time.time() - 301)
    assert old.status_code == 401 and "window" in old.json()["detail"]
    assert rows(endpoints, "SELECT count(*) FROM webhook_events") == [(0,)]
    assert SECRET.decode() not in old.text


def test_an_order_creates_customer_subscription_devices_and_welcome_once(shop: tuple[Endpoints, TestClient]) -> None:
    endpoints, client = shop
    now = datetime.now(UTC)
    first = _post(client, "/v1/webhooks/orders", _order("e1", now, ["bike-1", "bike-2"]))
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "created"
    again = _post(client, "/v1/webhooks/orders", _order("e1", now, ["bike-1", "bike-2"]))
    assert again.json() == {"duplicate": True}
    assert rows(endpoints, "SELECT name, locale FROM customers") == [("Ann", "de-DE")]
    (sub,) = rows(endpoints, "SELECT status, period_start::date, period_end::date FROM subscriptions")
    assert sub[0] == "active" and str(sub[2]) == "2028-01-31"
    assert rows(endpoints, "SELECT device_id FROM subscription_devices WHERE released_at IS NULL ORDER BY 1") == [
        ("bike-1",), ("bike-2",)]  # fmt: skip
    assert rows(endpoints, "SELECT kind, channel FROM outbox ORDER BY channel") == [("welcome", "email"),
                                                                                  ("welcome", "sms")]  # fmt: skip
    # a newer update moves a device; an older one arriving late changes nothing
    newer = _order("e2", now + timedelta(seconds=5), ["bike-2", "bike-3"], name="Ann B.")
    newer["type"] = "order.updated"
    assert _post(client, "/v1/webhooks/orders", newer).json()["outcome"] == "updated"
    late = _order("e0", now - timedelta(seconds=60), ["bike-9"])
    late["type"] = "order.updated"
    assert _post(client, "/v1/webhooks/orders", late).json()["outcome"].startswith("stale")
    assert rows(endpoints, "SELECT device_id FROM subscription_devices WHERE released_at IS NULL ORDER BY 1") == [
        ("bike-2",), ("bike-3",)]  # fmt: skip
    assert rows(endpoints, "SELECT count(*) FROM outbox") == [(2,)]


def test_payments_move_the_state_and_never_roll_back(shop: tuple[Endpoints, TestClient]) -> None:
    endpoints, client = shop
    now = datetime.now(UTC)
    _post(client, "/v1/webhooks/orders", _order("o1", now - timedelta(seconds=100), ["bike-1"]))

    def pay(event_id: str, kind: str, at: datetime) -> Any:
        event = {"id": event_id, "type": kind, "created": at.isoformat(), "data": {"subscription_ref": "order-1"}}
        return _post(client, "/v1/webhooks/payments", event).json()

    assert pay("p2", "payment.failed", now - timedelta(seconds=10))["outcome"] == "applied: past_due"
    assert pay("p3", "payment.paid", now)["outcome"] == "applied: active"
    assert pay("p1", "payment.failed", now - timedelta(seconds=50))["outcome"].startswith("stale")  # late
    assert rows(endpoints, "SELECT status, payment_state FROM subscriptions") == [("active", "paid")]
    unknown = _post(client, "/v1/webhooks/payments", {"id": "p9", "type": "payment.paid", "created": now.isoformat(),
                                                      "data": {"subscription_ref": "nope"}})  # fmt: skip
    assert unknown.status_code == 422


def test_orders_payments_and_imports_wake_the_lockout_engine(shop: tuple[Endpoints, TestClient]) -> None:
    """The engine acts on every subscription change at once: a change made by a webhook or an import
    is announced on the engine's channel when it commits, like one made through the store."""
    endpoints, client = shop
    listener = psycopg.connect(endpoints.database_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANNEL}")

        def heard() -> set[str]:
            return {n.payload for n in listener.notifies(timeout=2, stop_after=50)}

        now = datetime.now(UTC)
        _post(client, "/v1/webhooks/orders", _order("w1", now - timedelta(seconds=30), ["bike-9"]))
        (sid,) = rows(endpoints, "SELECT id::text FROM subscriptions WHERE external_ref = 'order-1'")[0]
        assert sid in heard()
        event = {"id": "w2", "type": "payment.failed", "created": now.isoformat(),
                 "data": {"subscription_ref": "order-1"}}  # fmt: skip
        assert _post(client, "/v1/webhooks/payments", event).json()["outcome"] == "applied: past_due"
        assert sid in heard()
        with api_client(endpoints, registry=True) as admin:
            report = admin.post("/v1/imports?filename=f.csv", content=_csv(3, start=900))
        assert report.status_code == 200, report.text
        imported = {i for (i,) in rows(endpoints, "SELECT id::text FROM subscriptions WHERE external_ref <> 'order-1'")}
        assert imported and imported <= heard()
    finally:
        listener.close()


def _csv(n: int, start: int = 0) -> bytes:
    lines = ["serial,customer_ref,customer_name,email,plan,start"]
    lines += [f"TRK-{i:05d},C{i // 3},Customer {i // 3},c{i // 3}@example.org,tracker-1y,2027-01-01"
              for i in range(start, start + n)]  # fmt: skip
    return ("\n".join(lines) + "\n").encode()


def test_import_all_or_none_then_idempotent(shop: tuple[Endpoints, TestClient]) -> None:
    endpoints, _ = shop
    with api_client(endpoints, registry=True) as admin:
        bad = _csv(6) + b"TRK-BAD!,C9,X,x@example.org,tracker-1y,2027-01-01\n"
        refused = admin.post("/v1/imports?filename=f.csv", content=bad)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert detail["errors"] == [{"row": 8, "field": "serial", "reason": detail["errors"][0]["reason"]}]
        assert "nothing imported" in detail["outcome"]
        assert rows(endpoints, "SELECT count(*) FROM subscription_devices") == [(0,)]
        done = admin.post("/v1/imports?filename=f.csv", content=_csv(6)).json()
        assert done["imported"] and done["written"] == {"devices": 6, "customers": 2, "subscriptions": 2,
                                                        "assignments": 6}  # fmt: skip
        assert len(done["credentials"]) == 6
        before = rows(endpoints, "SELECT id, updated_at, version FROM subscriptions ORDER BY id")
        again = admin.post("/v1/imports?filename=f.csv", content=_csv(6)).json()
        assert again["written"] == {"devices": 0, "customers": 0, "subscriptions": 0, "assignments": 0}
        assert rows(endpoints, "SELECT id, updated_at, version FROM subscriptions ORDER BY id") == before
        partial = admin.post("/v1/imports?filename=f.csv&partial=true", content=bad).json()
        assert partial["imported"] and "1 invalid rows skipped" in partial["outcome"]
    assert rows(endpoints, "SELECT count(*) FROM devices WHERE left(id, 4) = 'TRK-'") == [(6,)]
