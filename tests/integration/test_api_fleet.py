"""The map API on the real servers: vehicle filters and cursor pages over live state in Redis, a
vehicle's track from TimescaleDB (downsampled over long windows), dead letters, zone activity,
per-device utilization, /readyz and /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from fleet_harness import api_client

from api.keys import Role
from kernel import keys
from kernel.endpoints import Endpoints
from kernel.livestate import LiveState

pytestmark = pytest.mark.integration

GEO_TABLES = "zones, zone_deletions, zone_events, trips, device_service, utilization_hourly, gbfs_vehicle_ids"
SQUARE = [[[13.40, 52.50], [13.41, 52.50], [13.41, 52.51], [13.40, 52.51], [13.40, 52.50]]]


@pytest.fixture
def fleet(clean: Endpoints) -> Endpoints:
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {GEO_TABLES}")
    return clean


def put_live(endpoints: Endpoints, states: dict[str, dict[str, object]], online: dict[str, bool]) -> None:
    """Live state written the way ingest writes it (its Lua merge), and the gateway's online flags."""
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        now = time.time()
        patches = {d: {"id": d, "ts": now, "seen": now, "source": "json", "faults": [], **s} for d, s in states.items()}
        LiveState(client).apply(patches)
        for device_id, up in online.items():
            client.hset(keys.ONLINE, device_id, "1" if up else "0")
    finally:
        client.close()


@pytest.fixture
def api(fleet: Endpoints) -> Iterator[TestClient]:
    with api_client(fleet, Role.VIEWER) as client:
        yield client


def _ids(response: object) -> list[str]:
    body = response.json()  # type: ignore[attr-defined]
    return [f["id"] for f in body["features"]]


def test_vehicle_filters_combine_and_pages_cover_the_fleet_once(fleet: Endpoints, api: TestClient) -> None:
    states = {
        "v-riding": {"lon": 13.405, "lat": 52.505, "locked": False, "speed_kmh": 15.0, "battery_pct": 80.0},
        "v-parked": {"lon": 13.405, "lat": 52.506, "locked": False, "speed_kmh": 0.0, "battery_pct": 60.0},
        "v-locked": {"lon": 13.50, "lat": 52.60, "locked": True, "battery_pct": 90.0},
        "v-low": {"lon": 13.50, "lat": 52.61, "locked": True, "battery_pct": 9.0},
        "v-off": {"lon": 13.50, "lat": 52.62, "locked": True, "battery_pct": 70.0},
        "v-maint": {"lon": 13.406, "lat": 52.507, "locked": True, "battery_pct": 50.0},
        **{
            f"w-{i:02d}": {"lon": 13.3 + i * 0.001, "lat": 52.4, "locked": True, "battery_pct": 50.0} for i in range(25)
        },
    }
    put_live(fleet, states, {d: d != "v-off" for d in states})
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device_service (device_id, time, status)"
            " VALUES ('v-maint', now() - interval '1 h', 'maintenance')"
        )
        conn.execute("INSERT INTO zones (id, kind, geometry) VALUES ('z-sq', 'no_parking', %s)",
                     (psycopg.types.json.Jsonb({"type": "Polygon", "coordinates": SQUARE}),))  # fmt: skip

    everything = api.get("/v1/vehicles")
    assert everything.status_code == 200 and everything.headers["content-type"] == "application/geo+json"
    assert _ids(everything) == sorted(states)
    by_id = {f["id"]: f["properties"]["state"] for f in everything.json()["features"]}
    assert by_id["v-riding"] == "riding" and by_id["v-parked"] == "parked" and by_id["v-locked"] == "locked"
    assert by_id["v-low"] == "low_battery" and by_id["v-off"] == "offline" and by_id["v-maint"] == "maintenance"

    assert _ids(api.get("/v1/vehicles", params={"bbox": "13.40,52.50,13.41,52.51"})) == [
        "v-maint",
        "v-parked",
        "v-riding",
    ]
    assert _ids(api.get("/v1/vehicles", params={"state": ["riding", "offline"]})) == ["v-off", "v-riding"]
    assert _ids(api.get("/v1/vehicles", params={"battery_below": 55, "bbox": "13.45,52.55,13.55,52.65"})) == ["v-low"]
    assert _ids(api.get("/v1/vehicles", params={"online": "false"})) == ["v-off"]
    assert _ids(api.get("/v1/vehicles", params={"zone": "z-sq", "state": "riding"})) == ["v-riding"]
    assert api.get("/v1/vehicles", params={"zone": "nowhere"}).status_code == 404
    assert api.get("/v1/vehicles", params={"bbox": "13.5,52,13.4,53"}).status_code == 422
    assert api.get("/v1/vehicles", params={"bbox": "a,b,c"}).status_code == 422
    assert api.get("/v1/vehicles", params={"cursor": "not-ours"}).status_code == 422

    pages, cursor = [], None
    while True:
        page = api.get("/v1/vehicles", params={"limit": 7, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([f["id"] for f in page["features"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for p in pages for i in p] == sorted(states) and all(len(p) <= 7 for p in pages)
    assert api.get("/v1/vehicles/v-low").json()["properties"]["state"] == "low_battery"
    assert api.get("/v1/vehicles/nobody").status_code == 404


def _store_track(endpoints: Endpoints, device_id: str, start: datetime, n: int, step: timedelta) -> None:
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        key = conn.execute(
            "INSERT INTO device_keys (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING key",
            (device_id,),
        ).fetchone()[0]  # type: ignore[index]
        with conn.cursor().copy(
            "COPY telemetry (time, device_id, device_key, received_at, source, lon, lat) FROM STDIN"
        ) as copy:
            for i in range(n):
                t = start + i * step
                copy.write_row((t, device_id, key, t, "json", 13.4 + i * 1e-5, 52.5))


def test_a_track_is_a_linestring_downsampled_over_long_windows(fleet: Endpoints, api: TestClient) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    _store_track(fleet, "trk-1", end - timedelta(minutes=59), 354, timedelta(seconds=10))  # in the default hour
    _store_track(fleet, "trk-1", end - timedelta(days=2), 5000, timedelta(seconds=20))

    short = api.get("/v1/vehicles/trk-1/track")
    assert short.status_code == 200 and short.headers["content-type"] == "application/geo+json"
    feature = short.json()
    assert feature["geometry"]["type"] == "LineString" and feature["properties"]["bucket_s"] is None
    assert len(feature["geometry"]["coordinates"]) == 354 == feature["properties"]["points"]
    assert feature["geometry"]["coordinates"][0] == pytest.approx([13.4, 52.5])
    times = feature["properties"]["times"]
    assert times == sorted(times)

    window = {"from": (end - timedelta(days=3)).isoformat(), "to": end.isoformat()}
    long = api.get("/v1/vehicles/trk-1/track", params=window).json()
    assert long["properties"]["bucket_s"] is not None and long["properties"]["bucket_s"] >= 3 * 86400 / 2000
    assert 2 <= long["properties"]["points"] <= 2000
    assert len(long["geometry"]["coordinates"]) == long["properties"]["points"]

    empty = api.get("/v1/vehicles/trk-1/track", params={"from": "2020-01-01T00:00:00Z", "to": "2020-01-01T01:00:00Z"})
    assert empty.json()["geometry"] is None and empty.json()["properties"]["points"] == 0
    assert api.get("/v1/vehicles/nobody/track").status_code == 404
    assert api.get("/v1/vehicles/trk-1/track", params={"from": "2020-01-01T00:00:00Z"}).status_code == 422


def test_dead_letters_are_listed_in_pages_and_counted_by_reason(fleet: Endpoints, api: TestClient) -> None:
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    rows = [(f"1-{i}", 1, t0 + timedelta(seconds=i), "fleet/d/telemetry", "d1" if i % 2 else "d2",
             "bad_json" if i < 7 else "unknown_device", b"\x00{" * 3, 2 if i == 0 else 1)
            for i in range(10)]  # fmt: skip
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO dead_letters (stream_entry, seq, received_at, topic, device_id, reason, payload, count)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    seen, cursor = [], None
    while True:
        page = api.get("/v1/dead-letters", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        seen += [item["stream_entry"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"1-{i}" for i in reversed(range(10))]
    first = api.get("/v1/dead-letters", params={"reason": "bad_json", "device_id": "d1"}).json()["items"]
    assert [i["stream_entry"] for i in first] == ["1-5", "1-3", "1-1"]
    assert first[0]["payload_base64"] == "AHsAewB7"
    window = {"since": (t0 + timedelta(seconds=5)).isoformat(), "until": (t0 + timedelta(seconds=8)).isoformat()}
    assert len(api.get("/v1/dead-letters", params=window).json()["items"]) == 3
    counts = api.get("/v1/dead-letters/counts").json()["reasons"]
    assert counts == [
        {"reason": "bad_json", "letters": 7, "messages": 8},
        {"reason": "unknown_device", "letters": 3, "messages": 3},
    ]
    assert api.get("/v1/dead-letters/counts", params={"device_id": "d1"}).json()["reasons"][0]["letters"] == 3
    assert api.get("/v1/dead-letters", params={"cursor": "!!"}).status_code == 422


def test_zone_activity_and_per_device_utilization(fleet: Endpoints, api: TestClient) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    inside, outside = (13.405, 52.505), (13.6, 52.7)
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO zones (id, kind, geometry) VALUES ('z-a', 'no_parking', %s)",
                     (psycopg.types.json.Jsonb({"type": "Polygon", "coordinates": SQUARE}),))  # fmt: skip
        for i, kind in enumerate(["enter", "enter", "exit", "dwell"]):
            conn.execute("INSERT INTO zone_events (time, device_id, zone_id, kind, lon, lat)"
                         " VALUES (%s, 'b1', 'z-a', %s, 13.405, 52.505)",
                         (hour + timedelta(minutes=i), kind))  # fmt: skip
        trips = [("b1", hour + timedelta(minutes=5), inside, outside),
                 ("b2", hour + timedelta(minutes=6), outside, inside),
                 ("b3", hour + timedelta(minutes=7), outside, outside)]  # fmt: skip
        for device, start, (x0, y0), (x1, y1) in trips:
            conn.execute(
                "INSERT INTO trips (device_id, start_time, end_time, start_lon, start_lat, end_lon, end_lat,"
                " distance_m,"
                " duration_s, points) VALUES (%s, %s, %s, %s, %s, %s, %s, 100, 60, 5)",
                (device, start, start + timedelta(minutes=1), x0, y0, x1, y1),
            )
        for device, ride in (("b1", 600.0), ("b2", 1800.0)):
            conn.execute("INSERT INTO utilization_hourly (bucket, device_id, ride_s, idle_s, in_service_s)"
                         " VALUES (%s, %s, %s, %s, 3600)",
                         (hour, device, ride, 3600 - ride))  # fmt: skip
    put_live(fleet, {"b1": {"lon": inside[0], "lat": inside[1]}, "b2": {"lon": outside[0], "lat": outside[1]}}, {})

    activity = api.get("/v1/zones/z-a/activity")
    assert activity.status_code == 200, activity.text
    body = activity.json()
    assert body["vehicles_inside"] == 1
    (bucket,) = body["buckets"]
    assert (bucket["enter"], bucket["exit"], bucket["dwell"], bucket["violation"]) == (2, 1, 1, 0)
    assert (bucket["trips_started"], bucket["trips_ended"]) == (1, 1)
    assert api.get("/v1/zones/nowhere/activity").status_code == 404

    devices = api.get("/v1/utilization/devices").json()["devices"]
    assert [d["device_id"] for d in devices] == ["b2", "b1"]
    assert devices[0]["utilization"] == pytest.approx(0.5) and devices[1]["ride_hours"] == pytest.approx(1 / 6)
    assert api.get("/v1/utilization/devices", params={"device_id": "b1"}).json()["devices"][0]["device_id"] == "b1"


def test_readyz_reports_every_stage_and_metrics_need_a_key(fleet: Endpoints, api: TestClient) -> None:
    client = redis.Redis.from_url(fleet.redis_url)
    try:
        client.xgroup_create(keys.INGEST_STREAM, "ingest", id="0", mkstream=True)
        for i in range(5):
            client.xadd(keys.INGEST_STREAM, {"d": str(i)})
    finally:
        client.close()
    ready = api.get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    assert body["stages"]["ingest"]["lag"] == 5 and body["stages"]["ingest"]["pending"] == 0
    assert body["stages"]["geofence"]["lag"] is None  # its group was never made

    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 401
    text = api.get("/metrics").text
    assert 'fleet_api_stream_lag{stage="ingest"} 5.0' in text
    assert 'fleet_api_requests_total{method="GET",route="/readyz",status="200"}' in text


def test_the_snapshot_follows_published_changes_without_reading_the_whole_hash(
    fleet: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_harness import wait_for

    from api import livefleet

    monkeypatch.setattr(livefleet, "FRESH_S", 0.05)
    put_live(fleet, {"f-1": {"lon": 13.40, "lat": 52.50, "locked": True}, "f-2": {"lon": 13.5, "lat": 52.6}},
             {"f-1": True, "f-2": True})  # fmt: skip
    with api_client(fleet, Role.VIEWER) as api:
        assert _ids(api.get("/v1/vehicles")) == ["f-1", "f-2"]
        live: livefleet.LiveFleet = api.app.state.fleet  # type: ignore[attr-defined]
        wait_for(lambda: live._following, what="subscribed to fleet:live")
        api.get("/v1/vehicles")
        time.sleep(0.1)
        api.get("/v1/vehicles")  # a full read after subscribing: from here on, changes are followed
        wait_for(lambda: live._snapshot is not None and live._resynced_at > 0, what="a full read")
        full_read_at = live._resynced_at
        put_live(fleet, {"f-1": {"lon": 13.45, "lat": 52.55, "locked": False, "speed_kmh": 20.0}}, {})

        def moved() -> bool:
            feature = api.get("/v1/vehicles", params={"state": "riding"}).json()["features"]
            return [f["geometry"]["coordinates"] for f in feature] == [[13.45, 52.55]]

        wait_for(moved, timeout=10, what="the move seen in the listing")
        assert live._resynced_at == full_read_at  # seen through fleet:live, not by reading the hash again
