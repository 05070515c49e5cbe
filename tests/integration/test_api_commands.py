"""The command routes on the real database and Redis (no command service needed: they store and wake)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import psycopg
import pytest
import redis
from commands_harness import truncate_commands
from fastapi.testclient import TestClient
from fleet_harness import api_client, register

from api.keys import Role
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def api(clean: Endpoints) -> Iterator[TestClient]:
    truncate_commands(clean)
    register(clean, ["bike-1", "bike-2"])
    with api_client(clean, Role.OPERATOR) as client:  # sending and canceling is the operator's
        yield client


def _live(endpoints: Endpoints, device: str, speed_kmh: float) -> None:
    client = redis.Redis.from_url(endpoints.redis_url)
    state = {"id": device, "ts": time.time(), "seen": time.time(), "speed_kmh": speed_kmh, "locked": False}
    client.hset("fleet:vehicles", device, orjson.dumps(state))
    client.close()


def test_refusals(api: TestClient, clean: Endpoints) -> None:
    assert api.post("/v1/devices/nope/commands", json={"action": "lock"}).status_code == 404
    assert api.post("/v1/devices/bike-1/commands", json={"action": "selfdestruct"}).status_code == 422
    bad = api.post("/v1/devices/bike-1/commands", json={"action": "set_speed_limit", "params": {"kmh": 500}})
    assert bad.status_code == 422 and "kmh" in bad.json()["detail"]
    forced = api.post("/v1/devices/bike-1/commands",
                      json={"action": "lock", "force": True, "reason": "payment_overdue"})  # fmt: skip
    assert forced.status_code == 422
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET status = 'disabled' WHERE id = 'bike-2'")
    disabled = api.post("/v1/devices/bike-2/commands", json={"action": "locate"})
    assert disabled.status_code == 409 and "disabled" in disabled.json()["detail"]
    assert api.get("/v1/commands/not-a-uuid").status_code == 404
    assert api.post("/v1/commands/5f0c1a2e-8d7b-4c1e-9a3f-2b6d8e9f0a1b/cancel").status_code == 404


def test_lock_for_a_moving_vehicle_shows_the_wait(api: TestClient, clean: Endpoints) -> None:
    _live(clean, "bike-1", 21.0)
    response = api.post("/v1/devices/bike-1/commands", json={"action": "lock", "reason": "subscription_expired"})
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "waiting_for_park" and "park" in body["detail"]
    forced = api.post("/v1/devices/bike-1/commands", json={"action": "lock", "reason": "theft", "force": True})
    assert forced.json()["state"] == "queued" and forced.json()["superseded"] == [body["id"]]


def test_idempotency_key(api: TestClient) -> None:
    first = api.post("/v1/devices/bike-1/commands", json={"action": "alarm"}, headers={"Idempotency-Key": "k1"})
    again = api.post("/v1/devices/bike-1/commands", json={"action": "alarm"}, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200) and first.json()["id"] == again.json()["id"]
    other = api.post("/v1/devices/bike-1/commands", json={"action": "locate"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409 and "idempotency" in other.json()["detail"]
    elsewhere = api.post("/v1/devices/bike-2/commands", json={"action": "alarm", "idempotency_key": "k1"})
    assert elsewhere.status_code == 202  # keys are per device


def test_show_list_cancel_and_supersede(api: TestClient) -> None:
    lock = api.post("/v1/devices/bike-1/commands", json={"action": "lock", "ttl_s": 60}).json()
    unlock = api.post("/v1/devices/bike-1/commands", json={"action": "unlock"}).json()
    assert unlock["superseded"] == [lock["id"]]
    shown = api.get(f"/v1/commands/{lock['id']}").json()
    assert [t["to_state"] for t in shown["transitions"]] == ["queued", "superseded"]
    assert shown["transitions"][1]["detail"] == f"by {unlock['id']}"
    assert (shown["expires_at"] > shown["created_at"]) and shown["requested_by"] == "key:tests"  # the API key's name
    listed = api.get("/v1/commands", params={"device": "bike-1", "state": "queued"}).json()
    assert [c["id"] for c in listed] == [unlock["id"]]
    assert len(api.get("/v1/devices/bike-1/commands").json()) == 2
    canceled = api.post(f"/v1/commands/{unlock['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    again = api.post(f"/v1/commands/{unlock['id']}/cancel")
    assert again.status_code == 409 and "canceled" in again.json()["detail"]


def test_openapi_names_the_models(api: TestClient) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"CommandCreate", "CommandPublic", "CommandDetail", "TransitionPublic"} <= set(schemas)


def test_issue_many_in_one_transaction(api: TestClient, clean: Endpoints) -> None:
    """The bulk path (the lockout engine's): refusals in place, a lock then an unlock for one device
    leaves the lock superseded, a key repeated in the batch names the first command."""
    from datetime import UTC, datetime

    from commands.issue import CommandRefused, CommandRequest, Issued, issue_many
    from commands.model import Action, Rules

    reqs = [
        CommandRequest("bike-1", Action.LOCK, "lockout", reason="subscription_expired", idempotency_key="a"),
        CommandRequest("nope", Action.LOCK, "lockout"),
        CommandRequest("bike-1", Action.UNLOCK, "lockout", reason="renewed"),
        CommandRequest("bike-2", Action.LOCK, "lockout", idempotency_key="b"),
        CommandRequest("bike-2", Action.LOCK, "lockout", idempotency_key="b"),
    ]
    client = redis.Redis.from_url(clean.redis_url)
    try:
        with psycopg.connect(clean.database_url, autocommit=True) as conn:
            out = issue_many(conn, client, reqs, Rules(), datetime.now(UTC))
    finally:
        client.close()
    assert isinstance(out[1], CommandRefused) and out[1].status == 404
    lock, unlock, first, again = (out[i] for i in (0, 2, 3, 4))
    assert all(isinstance(x, Issued) for x in (lock, unlock, first, again))
    assert lock.command.state == "superseded" and unlock.superseded == (lock.command.id,)  # type: ignore[union-attr]
    assert (first.created, again.created) == (True, False) and first.command.id == again.command.id  # type: ignore[union-attr]
    shown = api.get(f"/v1/commands/{lock.command.id}").json()  # type: ignore[union-attr]
    assert [t["to_state"] for t in shown["transitions"]] == ["queued", "superseded"]
