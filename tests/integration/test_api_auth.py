"""Keys, roles and the audit trail on the real database: every route of the app is walked with no
key, a wrong key and each role; revoked keys are refused at once; every write leaves an audit row."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client, api_config, api_key
from typer.testing import CliRunner

from api.app import create_app
from api.auth import PUBLIC, api_routes, route_access
from api.deps import ApiConfig
from api.keys import Role
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

ROLES = list(Role)
SQUARE = {"type": "Polygon", "coordinates": [[[13.40, 52.50], [13.41, 52.50], [13.41, 52.51], [13.40, 52.50]]]}


@pytest.fixture(scope="module")
def keys(endpoints: Endpoints) -> dict[Role, str]:
    return {role: api_key(endpoints, role, f"matrix-{role}") for role in ROLES}


@pytest.fixture
def app_client(clean: Endpoints) -> Iterator[TestClient]:
    config = api_config(clean)  # the API's own role: the matrix checks its grants too
    with TestClient(create_app(config)) as client:
        yield client


def _operations(client: TestClient) -> list[tuple[str, str, Role | str]]:
    """(method, concrete path, access) for every operation route, however it was included."""
    ops = []
    for route in api_routes(client.app.routes):  # type: ignore[attr-defined]
        access = route_access(route)
        assert access is not None, f"{route.path} declares no role"
        path = re.sub(r"\{[^}]+\}", "probe-id", route.path)
        ops.extend((method, path, access) for method in sorted(route.methods - {"HEAD"}))
    return ops


def test_every_route_declares_a_role_and_the_matrix_holds(app_client: TestClient, keys: dict[Role, str]) -> None:
    ops = _operations(app_client)
    assert len(ops) >= 20, ops  # the walk found the included routers' routes
    for method, path, access in ops:
        anonymous = app_client.request(method, path)
        bogus = app_client.request(method, path, headers={"X-API-Key": "flt_000000000000_" + "A" * 43})
        if access == PUBLIC:
            assert anonymous.status_code not in (401, 403), (method, path)
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert bogus.status_code == 401, (method, path)
        for role in ROLES:
            header = {"Authorization": f"Bearer {keys[role]}"} if role != Role.OPERATOR else {"X-API-Key": keys[role]}
            status = app_client.request(method, path, headers=header).status_code
            if role.allows(access):
                assert status not in (401, 403), (method, path, role, status)
                assert status < 500, (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)


def test_docs_and_health_are_public_and_the_spec_shows_the_schemes(app_client: TestClient, admin_key: str) -> None:
    assert app_client.get("/v1/keys", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
    spec = app_client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert spec["paths"]["/v1/zones"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert app_client.get("/docs").status_code == 200
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_when_the_database_does_not_answer(clean: Endpoints) -> None:
    config = ApiConfig("postgresql://nobody:x@127.0.0.1:1/none", clean.redis_url)
    with TestClient(create_app(config)) as client:
        ready = client.get("/readyz")
        keyed = client.get("/v1/zones", headers={"X-API-Key": "flt_000000000000_" + "A" * 43})
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith("unavailable")
    assert keyed.status_code == 503 and "database" in keyed.json()["detail"]


def test_a_revoked_key_is_refused_at_once_and_keys_are_shown_once(clean: Endpoints) -> None:
    with api_client(clean) as admin:
        made = admin.post("/v1/keys", json={"name": "dispatch desk", "role": "operator"})
        assert made.status_code == 201, made.text
        token = made.json()["key"]
        headers = {"Authorization": f"Bearer {token}"}
        assert admin.get("/v1/zones", headers=headers).status_code == 200
        assert admin.get("/v1/keys", headers=headers).status_code == 403  # operator, not admin
        listed = {k["id"]: k for k in admin.get("/v1/keys").json()}
        assert "key" not in listed[made.json()["id"]] and listed[made.json()["id"]]["last_used_at"]
        assert admin.delete(f"/v1/keys/{made.json()['id']}").status_code == 204
        assert admin.get("/v1/zones", headers=headers).status_code == 401
        assert admin.delete("/v1/keys/000000000000").status_code == 404
        assert admin.post("/v1/keys", json={"name": "x", "role": "root"}).status_code == 422
    with psycopg.connect(clean.database_url) as conn:
        stored = conn.execute("SELECT secret_sha256 FROM api_keys WHERE id = %s", (made.json()["id"],)).fetchone()
    assert stored is not None and token.encode() not in bytes(stored[0])


def test_reregistering_is_409_and_rotate_is_its_own_audited_action(clean: Endpoints) -> None:
    with api_client(clean, registry=True) as admin:
        first = admin.post("/v1/devices", json={"id": "victim-1"})
        assert first.status_code == 201
        again = admin.post("/v1/devices", json={"id": "victim-1"})
        assert again.status_code == 409 and "rotate" in again.json()["detail"]
        rotated = admin.post("/v1/devices/victim-1/rotate")
        assert rotated.status_code == 200
        assert rotated.json()["mqtt_password"] != first.json()["mqtt_password"]
        assert admin.post("/v1/devices/nobody/rotate").status_code == 404
        trail = admin.get("/v1/audit", params={"target": "victim-1"}).json()["items"]
    assert [row["action"] for row in trail] == ["device.rotate", "device.create"]
    assert "password" not in str(trail)
    assert trail[0]["route"] == "POST /v1/devices/{device_id}/rotate"
    assert trail[0]["key_name"] == "tests" and trail[0]["role"] == "admin"


@pytest.mark.parametrize("device_id", ["fleet-service", "fleet-commands", "fleet-admin", "fleet-gateway-x"])
def test_service_account_ids_are_refused_and_leave_no_row(clean: Endpoints, device_id: str) -> None:
    with api_client(clean, registry=True) as admin:
        response = admin.post("/v1/devices", json={"id": device_id})
        assert response.status_code == 422
        assert "reserved" in response.json()["detail"] or "service account" in response.json()["detail"]
        assert admin.get("/v1/devices").json() == []


def test_writes_are_audited_with_before_and_after_and_paged(clean: Endpoints) -> None:
    with api_client(clean, Role.OPERATOR) as operator:
        assert operator.post("/v1/zones", json={"id": "a1", "kind": "no_ride", "geometry": SQUARE}).status_code == 201
        renamed = {"name": "Park", "kind": "no_ride", "geometry": SQUARE}
        assert operator.put("/v1/zones/a1", json=renamed).status_code == 200
        assert operator.delete("/v1/zones/a1").status_code == 204
        assert operator.get("/v1/audit").status_code == 403
    with api_client(clean) as admin:
        page = admin.get("/v1/audit", params={"target": "a1", "limit": 2}).json()
        assert [r["action"] for r in page["items"]] == ["zone.delete", "zone.replace"]
        rest = admin.get("/v1/audit", params={"target": "a1", "before_id": page["next_before_id"]}).json()
    replace = page["items"][1]
    assert replace["before"]["properties"]["name"] == "" and replace["after"]["properties"]["name"] == "Park"
    assert page["items"][0]["after"] is None
    assert [r["action"] for r in rest["items"]] == ["zone.create"] and rest["next_before_id"] is None
    assert rest["items"][0]["before"] is None and rest["items"][0]["role"] == "operator"


def test_fleet_keys_commands(clean: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.cli import app

    for name, value in clean.env().items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--role", "viewer", "--name", "wall screen"])
    assert made.exit_code == 0, made.output
    token = made.output.split()[-1]
    key_id = token.split("_")[1]
    listed = runner.invoke(app, ["keys", "list"])
    assert key_id in listed.output and "wall screen" in listed.output and token not in listed.output
    with TestClient(create_app(ApiConfig(clean.database_url, clean.redis_url))) as client:
        assert client.get("/v1/zones", headers={"X-API-Key": token}).status_code == 200
        assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
        assert client.get("/v1/zones", headers={"X-API-Key": token}).status_code == 401
    assert runner.invoke(app, ["keys", "create", "--role", "root", "--name", "x"]).exit_code == 2
    assert runner.invoke(app, ["keys", "revoke", "000000000000"]).exit_code == 1
    with psycopg.connect(clean.database_url) as conn:
        actions = conn.execute("SELECT action, key_name FROM audit_log WHERE target = %s ORDER BY id", (key_id,))
        rows = actions.fetchall()
    assert [a for a, _ in rows] == ["key.create", "key.revoke"] and rows[0][1].startswith("cli:")


def test_the_demo_key_is_admin_and_replaces_the_previous_one(clean: Endpoints) -> None:
    from fleet.demo import demo_key

    first, second = demo_key(clean.database_url), demo_key(clean.database_url)
    with TestClient(create_app(ApiConfig(clean.database_url, clean.redis_url))) as client:
        assert client.get("/v1/audit", headers={"X-API-Key": second}).status_code == 200
        assert client.get("/v1/audit", headers={"X-API-Key": first}).status_code == 401


def test_a_phantom_row_under_a_service_account_name_can_be_deleted(clean: Endpoints) -> None:
    """Older releases left such a row when the broker refused the account; deleting it must remove
    only the row, never the service account."""
    with psycopg.connect(clean.database_url) as conn:
        conn.execute("INSERT INTO devices (id) VALUES ('fleet-service')")
    with api_client(clean, registry=True) as admin:
        assert admin.post("/v1/devices/fleet-service/rotate").status_code == 422
        assert admin.delete("/v1/devices/fleet-service").status_code == 204
        assert admin.get("/v1/devices").json() == []
    from provisioning.broker_admin import BrokerAdmin

    with BrokerAdmin(clean.mqtt_admin_url) as broker:
        assert broker.get_client("fleet-service") is not None
