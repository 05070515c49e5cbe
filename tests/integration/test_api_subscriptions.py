"""The subscription routes, and the unlock the subscription does not allow: 409, or an audited override."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client
from subs_harness import add_devices, give_notice, truncate_subscriptions

from api.keys import Role
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def subs(clean: Endpoints) -> Endpoints:
    truncate_subscriptions(clean)
    add_devices(clean, ["bike-1", "bike-2"])
    return clean


@pytest.fixture
def admin(subs: Endpoints) -> Iterator[TestClient]:
    with api_client(subs, Role.ADMIN) as client:
        yield client


def _lapsed(admin: TestClient, subs: Endpoints) -> str:
    """A subscription that ended a day ago, both notices long sent, on bike-1."""
    assert admin.post("/v1/plans", json={"id": "courier-monthly", "name": "Courier", "period_months": 1,
                                         "price_cents": 4900}).status_code == 201  # fmt: skip
    customer = admin.post("/v1/customers", json={"name": "Ada", "email": "ada@example.org", "phone": "+4915112345678"})
    assert customer.status_code == 201, customer.text
    now = datetime.now(UTC)
    end = now - timedelta(days=1)
    made = admin.post("/v1/subscriptions", json={
        "customer_id": customer.json()["id"], "plan_id": "courier-monthly",
        "start": (end - timedelta(days=30)).isoformat(), "end": end.isoformat(), "devices": ["bike-1"],
    })  # fmt: skip
    assert made.status_code == 201, made.text
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        give_notice(
            conn, [made.json()["id"]], datetime.fromisoformat(made.json()["period_end"]), now - timedelta(days=5)
        )
    return made.json()["id"]


def test_admin_writes_viewer_reads_and_the_device_summary(admin: TestClient, subs: Endpoints) -> None:
    sid = _lapsed(admin, subs)
    with api_client(subs, Role.VIEWER) as viewer:
        assert viewer.get(f"/v1/subscriptions/{sid}").json()["devices"] == ["bike-1"]
        assert viewer.post(f"/v1/subscriptions/{sid}/renew", json={}).status_code == 403
        summary = viewer.get("/v1/devices/bike-1/subscription").json()
        assert summary["subscription"]["id"] == sid and "renew" in summary["unlock_refused"]
        assert viewer.get("/v1/devices/bike-2/subscription").json()["subscription"] is None  # on none
    renewed = admin.post(f"/v1/subscriptions/{sid}/renew", json={"periods": 1})
    assert renewed.status_code == 200 and renewed.json()["status"] == "active"
    assert datetime.fromisoformat(renewed.json()["period_end"]) > datetime.now(UTC) + timedelta(days=27)
    assert admin.get("/v1/devices/bike-1/subscription").json()["unlock_refused"] is None
    failed = admin.post(f"/v1/subscriptions/{sid}/payments", json={"paid": False})
    assert failed.json()["payment_state"] == "failed" and failed.json()["status"] == "past_due"
    assert admin.post(f"/v1/subscriptions/{sid}/cancel").json()["status"] == "canceled"
    assert admin.post("/v1/subscriptions/00000000-0000-0000-0000-000000000000/renew", json={}).status_code == 404
    assert (
        admin.post("/v1/plans", json={"id": "odd", "name": "x", "period_months": 5, "price_cents": 1}).status_code
        == 422
    )
    actions = [e["action"] for e in admin.get("/v1/audit?limit=50").json()["items"]]
    assert {"subscription.create", "subscription.renew", "subscription.payment", "subscription.cancel"} <= set(actions)


def test_operator_unlock_of_a_lapsed_subscription_is_409_and_admin_override_is_audited(
    admin: TestClient, subs: Endpoints
) -> None:
    _lapsed(admin, subs)
    with api_client(subs, Role.OPERATOR) as operator:
        refused = operator.post("/v1/devices/bike-1/commands", json={"action": "unlock"})
        assert refused.status_code == 409, refused.text
        assert "ended" in refused.json()["detail"] and "override" in refused.json()["detail"]
        assert (
            operator.post("/v1/devices/bike-1/commands", json={"action": "unlock", "override": True}).status_code == 403
        )
        assert (
            operator.post("/v1/devices/bike-2/commands", json={"action": "unlock"}).status_code == 202
        )  # no subscription
        assert operator.post("/v1/devices/bike-1/commands", json={"action": "lock"}).status_code == 202
    assert admin.post("/v1/devices/bike-1/commands", json={"action": "unlock"}).status_code == 409
    done = admin.post("/v1/devices/bike-1/commands", json={"action": "unlock", "override": True})
    assert done.status_code == 202, done.text
    audit = admin.get("/v1/audit?action=command.unlock_override").json()["items"]
    assert len(audit) == 1 and audit[0]["target"] == "bike-1" and "ended" in audit[0]["before"]["refusal"]
    # an exempt device may be unlocked
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert admin.post("/v1/devices/bike-1/exemptions", json={"until": until, "reason": "workshop"}).status_code == 201
    with api_client(subs, Role.OPERATOR) as operator:
        assert operator.post("/v1/devices/bike-1/commands", json={"action": "unlock"}).status_code == 202
