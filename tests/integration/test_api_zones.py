"""The zones, events, trips, service status and utilization API on the real database: bad zones are
a 422 that says what is wrong, unknown ones a 404, and stored zones come back normalised."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client

from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

GEO_TABLES = "zones, zone_deletions, zone_events, trips, device_service, utilization_hourly"
RING = [[13.40, 52.50], [13.41, 52.50], [13.41, 52.51], [13.40, 52.51], [13.40, 52.50]]
SQUARE = {"type": "Polygon", "coordinates": [RING]}
BOWTIE = {"type": "Polygon", "coordinates": [[RING[0], RING[2], RING[1], RING[3], RING[0]]]}


@pytest.fixture
def api(clean: Endpoints) -> Iterator[TestClient]:
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {GEO_TABLES}")
    with api_client(clean) as client:
        yield client


def test_zone_lifecycle_and_normalised_geometry(api: TestClient) -> None:
    clockwise = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [RING[::-1]]}}
    created = api.post("/v1/zones", json={"id": "z1", "name": "Old town", "kind": "no_ride", "geometry": clockwise})
    assert created.status_code == 201, created.text
    feature = created.json()
    assert feature["id"] == "z1" and feature["properties"]["kind"] == "no_ride"
    ring = feature["geometry"]["coordinates"][0]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))
    assert area2 > 0, "stored shell is counter-clockwise (RFC 7946)"
    assert api.post("/v1/zones", json={"id": "z1", "kind": "no_ride", "geometry": SQUARE}).status_code == 409

    generated = api.post("/v1/zones", json={"kind": "slow", "speed_limit_kmh": 12, "geometry": SQUARE}).json()
    assert generated["id"].startswith("zone-") and generated["properties"]["speed_limit_kmh"] == 12

    listing = api.get("/v1/zones")
    assert listing.headers["content-type"] == "application/geo+json"
    assert sorted(f["id"] for f in listing.json()["features"]) == sorted(["z1", generated["id"]])

    changed = api.put("/v1/zones/z1", json={"name": "Old town", "kind": "no_parking", "geometry": SQUARE})
    assert changed.status_code == 200
    assert changed.json()["properties"]["kind"] == "no_parking"
    assert changed.json()["properties"]["version"] > feature["properties"]["version"]
    assert api.get("/v1/zones/z1").json()["properties"]["kind"] == "no_parking"
    assert api.delete("/v1/zones/z1").status_code == 204
    assert api.get("/v1/zones/z1").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "no_ride", "geometry": BOWTIE}, "invalid geometry: Self-intersection at lon"),
        ({"kind": "no_ride", "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}}, "must be Polygon or Multi"),
        ({"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [RING[:3]]}}, "a ring needs at least 4"),
        ({"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[*RING[:-1], RING[1]]]}}, "not closed"),
        ({"kind": "slow", "geometry": SQUARE}, "a slow zone needs speed_limit_kmh"),
        ({"kind": "parking", "geometry": SQUARE}, "unknown kind 'parking'"),
        ({"kind": "no_ride", "geometry": {"type": "Polygon", "coordinates": [[[13.4, 95.0]] * 4]}}, "outside lon/lat"),
    ],
)
def test_bad_zones_are_refused_with_a_clear_message(api: TestClient, body: dict, message: str) -> None:
    response = api.post("/v1/zones", json={"id": "bad", **body})
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert api.put("/v1/zones/bad", json=body).status_code in (404, 422)
    assert api.get("/v1/zones/bad").status_code == 404


def test_unknown_zones_and_devices_are_404(api: TestClient) -> None:
    assert api.get("/v1/zones/nope").status_code == 404
    assert api.put("/v1/zones/nope", json={"kind": "no_ride", "geometry": SQUARE}).status_code == 404
    assert api.delete("/v1/zones/nope").status_code == 404
    assert api.put("/v1/devices/nope/service", json={"status": "maintenance"}).status_code == 404
    assert api.get("/v1/devices/nope/service").status_code == 404
    assert api.put("/v1/devices/nope/service", json={"status": "broken"}).status_code == 422
    backwards = {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    assert api.get("/v1/utilization", params=backwards).status_code == 422


def test_service_status_drives_the_utilization_rollup(api: TestClient, clean: Endpoints) -> None:
    """Two vehicles for two whole past hours; one rides 30 minutes, the other is in maintenance."""
    h0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, created_at) VALUES ('u1', %s), ('u2', %s)", (h0, h0))
        conn.execute(
            "INSERT INTO trips VALUES ('u1', %s, %s, 13.4, 52.5, 13.41, 52.5, 5000, 1800, 100, false)",
            (h0 + timedelta(minutes=45), h0 + timedelta(minutes=75)),
        )
    reply = api.put("/v1/devices/u2/service", json={"status": "maintenance", "since": h0.isoformat()})
    assert reply.status_code == 200 and reply.json()["status"] == "maintenance"
    assert api.get("/v1/devices/u2/service").json()["status"] == "maintenance"
    api.put("/v1/devices/u1/service", json={"status": "in_service", "since": h0.isoformat()})

    window = {"from": h0.isoformat(), "to": (h0 + timedelta(hours=2)).isoformat()}
    hourly = api.get("/v1/utilization", params={**window, "bucket": "hour"}).json()
    assert [b["ride_hours"] for b in hourly["buckets"]] == [0.25, 0.25]
    assert [b["utilization"] for b in hourly["buckets"]] == [0.25, 0.25]
    assert all(b["vehicles_in_service"] == 1 and b["vehicles_in_maintenance"] == 1 for b in hourly["buckets"])
    assert all(b["maintenance_hours"] == 1.0 and b["idle_hours"] == 0.75 for b in hourly["buckets"])
    total = hourly["total"]
    assert total["utilization"] == 0.25 and total["ride_hours"] == 0.5 and total["in_service_hours"] == 2.0
    assert total["avg_vehicles_in_service"] == 1.0 and total["vehicles_in_maintenance"] == 1

    daily = api.get("/v1/utilization", params={**window, "bucket": "day"}).json()
    assert sum(b["ride_hours"] for b in daily["buckets"]) == 0.5
    one = api.get("/v1/utilization", params={**window, "device_id": "u2"}).json()
    assert one["total"]["utilization"] is None and one["total"]["maintenance_hours"] == 2.0

    trips = api.get("/v1/trips", params={"device_id": "u1", "since": h0.isoformat()}).json()
    assert len(trips) == 1 and trips[0]["duration_s"] == 1800 and trips[0]["ongoing"] is False
    assert api.get("/v1/events", params={"device_id": "u1"}).json() == []
