"""GBFS 3.0 (public) and MDS 2.0 (behind a key) on the real servers, each answer checked against the
official schemas; GBFS ids rotate after each trip, hold between trips and across API restarts, and
vehicles in a rental or not heard from for five minutes are not listed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from feeds_oracle import gbfs_errors, mds_errors
from fleet_harness import api_client
from test_api_fleet import GEO_TABLES, SQUARE, put_live

from api import livefleet, mobility
from api.keys import Role
from kernel import keys
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration
PUBLIC = {"Authorization": ""}


@pytest.fixture
def feeds(clean: Endpoints, monkeypatch: pytest.MonkeyPatch) -> Endpoints:
    monkeypatch.setattr(livefleet, "FRESH_S", 0.0)  # every request sees the state just written
    monkeypatch.setattr(livefleet, "STALE_S", 0.0)
    monkeypatch.setattr(livefleet, "RESYNC_S", 0.0)  # and reads it whole, not from what was published
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {GEO_TABLES}")
    return clean


@pytest.fixture
def api(feeds: Endpoints) -> Iterator[TestClient]:
    with api_client(feeds, Role.VIEWER) as client:
        yield client


def _trip(endpoints: Endpoints, device_id: str, start: datetime, ongoing: bool = False) -> None:
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trips (device_id, start_time, end_time, start_lon, start_lat, end_lon, end_lat, distance_m,"
            " duration_s, points, ongoing) VALUES (%s, %s, %s, 13.4, 52.5, 13.41, 52.51, 900, 300, 30, %s)",
            (device_id, start, start + timedelta(minutes=5), ongoing),
        )


def _status(api: TestClient) -> dict[str, object]:
    response = api.get("/gbfs/3.0/vehicle_status.json", headers=PUBLIC)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert gbfs_errors("vehicle_status", doc) == []
    return doc


def test_every_gbfs_file_is_public_and_valid(feeds: Endpoints, api: TestClient) -> None:
    with psycopg.connect(feeds.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO zones (id, kind, name, speed_limit_kmh, geometry)"
                     " VALUES ('slow-1', 'slow', 'Old town', 10, %s)",
                     (psycopg.types.json.Jsonb({"type": "Polygon", "coordinates": SQUARE}),))  # fmt: skip
    put_live(feeds, {"g1": {"lon": 13.4, "lat": 52.5, "locked": True, "battery_pct": 55.0}}, {"g1": True})
    discovery = api.get("/gbfs/3.0/gbfs.json", headers=PUBLIC)
    assert discovery.status_code == 200 and gbfs_errors("gbfs", discovery.json()) == []
    for feed in discovery.json()["data"]["feeds"]:
        path = feed["url"].split("://", 1)[1].split("/", 1)[1]
        doc = api.get("/" + path, headers=PUBLIC).json()
        assert gbfs_errors(feed["name"], doc) == [], feed["name"]
        assert isinstance(doc["ttl"], int) and datetime.fromisoformat(doc["last_updated"]) > datetime(
            2020, 1, 1, tzinfo=UTC
        )
    zones = api.get("/gbfs/3.0/geofencing_zones.json", headers=PUBLIC).json()["data"]["geofencing_zones"]["features"]
    assert zones[0]["properties"]["rules"][0]["maximum_speed_kph"] == 10
    (vehicle,) = _status(api)["data"]["vehicles"]  # type: ignore[index]
    assert vehicle["current_fuel_percent"] == 0.55 and vehicle["vehicle_id"] != "g1"


def test_gbfs_ids_rotate_after_each_trip_and_rentals_are_hidden(feeds: Endpoints, api: TestClient) -> None:
    put_live(feeds, {d: {"lon": 13.4, "lat": 52.5, "locked": True} for d in ("r1", "r2", "r3")}, {})
    first = {v["vehicle_id"] for v in _status(api)["data"]["vehicles"]}  # type: ignore[index]
    assert len(first) == 3 and not first & {"r1", "r2", "r3"}
    assert {v["vehicle_id"] for v in _status(api)["data"]["vehicles"]} == first  # type: ignore[index]

    t = datetime.now(UTC) - timedelta(minutes=30)
    _trip(feeds, "r1", t)  # a trip ended: r1 gets a new id
    _trip(feeds, "r2", t, ongoing=True)  # in a rental: not listed
    put_live(feeds, {"r3": {"locked": False, "speed_kmh": 12.0}}, {})  # unlocked: riding, not listed
    second = {v["vehicle_id"] for v in _status(api)["data"]["vehicles"]}  # type: ignore[index]
    assert len(second) == 1 and not second & first

    with api_client(feeds, Role.VIEWER) as restarted:  # the ids are stored: the same after a restart
        assert {v["vehicle_id"] for v in _status(restarted)["data"]["vehicles"]} == second  # type: ignore[index]

    with psycopg.connect(feeds.database_url, autocommit=True) as conn:
        conn.execute("UPDATE trips SET ongoing = false WHERE device_id = 'r2'")
    _trip(feeds, "r1", t + timedelta(minutes=10))
    put_live(feeds, {"r3": {"locked": True, "speed_kmh": 0.0}}, {})
    third = {v["vehicle_id"] for v in _status(api)["data"]["vehicles"]}  # type: ignore[index]
    assert len(third) == 3 and not third & second and not third & first


def test_vehicles_not_heard_from_for_five_minutes_are_left_out(feeds: Endpoints, api: TestClient) -> None:
    client = redis.Redis.from_url(feeds.redis_url)
    try:
        old = time.time() - mobility.MAX_AGE_S - 5
        state = b'{"id":"s1","ts":%f,"seen":%f,"lon":13.4,"lat":52.5,"locked":true}' % (old, old)
        client.hset(keys.VEHICLES, "s1", state)
    finally:
        client.close()
    put_live(feeds, {"s2": {"lon": 13.4, "lat": 52.5, "locked": True}}, {})
    assert len(_status(api)["data"]["vehicles"]) == 1  # type: ignore[arg-type,index]


def test_mds_vehicles_and_telemetry_are_valid_and_need_a_key(feeds: Endpoints, api: TestClient) -> None:
    with psycopg.connect(feeds.database_url, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO devices (id) VALUES (%s)", [(f"m-{i:04d}",) for i in range(1005)])
    assert api.get("/mds/2.0/vehicles", headers=PUBLIC).status_code == 401
    first = api.get("/mds/2.0/vehicles")
    assert first.status_code == 200 and first.headers["content-type"].startswith("application/vnd.mds+json")
    assert mds_errors("/vehicles", first.json()) == []
    rest = api.get(first.json()["links"]["next"]).json()
    assert mds_errors("/vehicles", rest) == [] and rest["links"]["next"] is None
    assert [v["vehicle_id"] for v in first.json()["vehicles"] + rest["vehicles"]] == [f"m-{i:04d}" for i in range(1005)]

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    with psycopg.connect(feeds.database_url, autocommit=True) as conn:
        key = conn.execute("INSERT INTO device_keys (id) VALUES ('m-0001') ON CONFLICT (id) DO UPDATE SET id = 'm-0001'"
                           " RETURNING key").fetchone()[0]  # type: ignore[index]  # fmt: skip
        conn.cursor().executemany(
            "INSERT INTO telemetry (time, device_id, device_key, received_at, source, lon, lat, speed_kmh, battery_pct,"
            " satellites) VALUES (%s, 'm-0001', %s, now(), 'json', 13.4, 52.5, 18, 64.2, 8)",
            [(hour + timedelta(minutes=i), key) for i in range(30)],
        )
    _trip(feeds, "m-0001", hour + timedelta(minutes=10))  # minutes 10..15 lie in the trip
    answer = api.get("/mds/2.0/telemetry", params={"telemetry_time": hour.strftime("%Y-%m-%dT%H")})
    assert answer.status_code == 200, answer.text
    assert mds_errors("/telemetry", answer.json()) == []
    telemetry = answer.json()["telemetry"]
    assert len(telemetry) == 30 and telemetry[0]["location"]["speed"] == pytest.approx(5.0)
    assert sum(1 for r in telemetry if r["trip_ids"]) == 6
    assert len({r["trip_ids"][0] for r in telemetry if r["trip_ids"]}) == 1
    assert api.get("/mds/2.0/telemetry", params={"telemetry_time": "2026-13-01T00"}).status_code == 400
    assert api.get("/mds/2.0/telemetry").status_code == 422
