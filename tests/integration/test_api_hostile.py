"""Hostile input at every route of the API: never a 5xx, and the cases that used to be 500s are now
a 422 (or 413) that says why. Routes are enumerated from the app and parameters from its OpenAPI
document, so a new route or parameter is covered without editing this table."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client

from api.auth import api_routes
from api.inputs import MAX_BODY_BYTES
from geofence.zones import MAX_VERTICES
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

PATH_VALUES = ["%00", "a%01b", "%7F", "%ED%A0%80", "..%2F..", "x" * 5000, "%F0%9F%92%A5", "-1"]
QUERY_VALUES = [
    "\x00", "a\x1bb", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z",
    "-1", "99999999999999999999999", "NaN", "", "x" * 5000,
]  # fmt: skip
DEEP = b"[" * 5000 + b"]" * 5000
BODIES: list[bytes] = [
    b"", b"null", b"[]", b'"x"', b"{}", b"{", b"\xff\xfe", DEEP, b'{"x": NaN}', b'{"x": 1e400}',
    b'{"id": "a\\u0000b", "name": "n", "kind": "no_ride", "role": "viewer"}',
    b'{"id": "ok-1", "name": "\\ud800", "kind": "no_ride", "role": "viewer"}',
    b'{"id": "fleet-service"}', b'{"id": "fleet-admin", "name": "x"}',
    b'{"status": "maintenance", "since": "1900-01-01T00:00:00Z"}',
    b'{"status": "maintenance", "since": "0001-01-01T00:00:00+01:00"}',
    b'{"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1e308, 0], [0, 1], [0, 0]]]}}',
    b'{"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[["a", 0], [1, 0], [0, 1], ["a", 0]]]}}',
    b'{"kind": "slow", "speed_limit_kmh": 1e400, "geometry": {"type": "Polygon", "coordinates": []}}',
    b'{"name": "x", "role": "admin", "id": "' + b"y" * 10000 + b'"}',
]  # fmt: skip


@pytest.fixture
def admin(clean: Endpoints) -> Iterator[TestClient]:
    with api_client(clean, registry=True) as client:
        yield client


def _operations(client: TestClient) -> Iterator[tuple[str, str, list[str]]]:
    """(method, path template, query parameter names) of every operation route."""
    spec = client.get("/openapi.json").json()["paths"]
    for route in api_routes(client.app.routes):  # type: ignore[attr-defined]
        for method in sorted(route.methods - {"HEAD"}):
            operation = spec.get(route.path, {}).get(method.lower(), {})
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            yield method, route.path, names


def _fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, template)


def test_no_hostile_request_gets_a_5xx(admin: TestClient) -> None:
    failures: list[str] = []
    sent = 0

    def send(method: str, url: str, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1
        response = admin.request(method, url, **kwargs)
        if response.status_code >= 500:
            failures.append(f"{method} {url[:80]} {str(kwargs)[:120]} -> {response.status_code} {response.text[:200]}")

    for method, template, query_names in _operations(admin):
        for value in PATH_VALUES if "{" in template else []:
            send(method, _fill(template, value))
        url = _fill(template, "probe-1")
        for name in query_names:
            for value in QUERY_VALUES:
                send(method, url, params={name: value})
            send(method, f"{url}?{name}=%ED%A0%80&{name}=%C0%80")  # not UTF-8: a surrogate, an overlong NUL
        if method in ("POST", "PUT"):
            for body in BODIES:
                send(method, url, content=body, headers={"content-type": "application/json"})
    assert sent > 400
    assert not failures, f"{len(failures)} of {sent} requests got a 5xx:\n" + "\n".join(failures[:30])


def _reason(response: Any) -> str:
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(str(d.get("msg")) for d in detail)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("/v1/zones/%00", "control character U+0000"),
        ("/v1/vehicles/a%1Fb", "control character U+001F"),
        ("/v1/events?device_id=%00", "control character U+0000"),
        ("/v1/events?since=0001-01-01T00:00:00%2B01:00", "between 1970-01-01 and 2100-01-01"),
        ("/v1/trips?until=9999-12-31T23:59:59-01:00", "between 1970-01-01 and 2100-01-01"),
        ("/v1/utilization?from=1970-01-01T00:00:00Z&to=2099-01-01T00:00:00Z", "at most 10000 hour buckets"),
        ("/v1/audit?since=1900-01-01T00:00:00Z", "between 1970-01-01 and 2100-01-01"),
    ],
)
def test_former_500s_are_422_with_a_reason(admin: TestClient, url: str, reason: str) -> None:
    response = admin.get(url)
    assert response.status_code == 422, response.text
    assert reason in _reason(response)


def test_nul_in_a_body_is_422_and_stores_nothing(admin: TestClient) -> None:
    square = [[13.4, 52.5], [13.41, 52.5], [13.41, 52.51], [13.4, 52.5]]
    body = {
        "id": "z-nul",
        "name": "a\x00b",
        "kind": "no_ride",
        "geometry": {"type": "Polygon", "coordinates": [square]},
    }
    response = admin.post("/v1/zones", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert admin.get("/v1/zones/z-nul").status_code == 404


def test_recompute_window_is_bounded(admin: TestClient) -> None:
    assert admin.post("/v1/devices", json={"id": "svc-1"}).status_code == 201
    now = datetime.now(UTC)
    for since, status in [
        ("1900-01-01T00:00:00Z", 422),
        ((now - timedelta(days=40)).isoformat(), 422),
        ((now - timedelta(days=10)).isoformat(), 200),
    ]:
        response = admin.put("/v1/devices/svc-1/service", json={"status": "maintenance", "since": since})
        assert response.status_code == status, (since, response.text)
    assert "at most 31 days" in _reason(admin.put("/v1/devices/svc-1/service", json={
        "status": "maintenance", "since": "2000-01-01T00:00:00Z"}))  # fmt: skip


def test_zone_vertex_limit_and_the_whole_world(admin: TestClient) -> None:
    import math

    n = MAX_VERTICES + 1
    ring = [[13.4 + 0.01 * math.cos(2 * math.pi * i / n), 52.5 + 0.01 * math.sin(2 * math.pi * i / n)]
            for i in range(n - 1)]  # fmt: skip
    ring.append(ring[0])
    big = admin.post(
        "/v1/zones", json={"id": "big", "kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [ring]}}
    )
    assert big.status_code == 422 and f"more than {MAX_VERTICES} vertices" in big.json()["detail"]
    world = [[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]
    made = admin.post("/v1/zones", json={"id": "world", "kind": "service_area",
                                         "geometry": {"type": "Polygon", "coordinates": [world]}})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["geometry"]["coordinates"][0][0] in (
        [-180.0, -90.0],
        [180.0, -90.0],
        [-180.0, 90.0],
        [180.0, 90.0],
    )


def test_oversize_bodies_are_413(admin: TestClient) -> None:
    response = admin.post(
        "/v1/zones", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
