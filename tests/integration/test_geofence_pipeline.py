"""The geofence worker end to end on the real servers: device → broker → gateway → ingest →
`fleet:positions` → geofence worker → zone_events / trips / utilization rollup and `fleet:events`."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from fleet_harness import api_client, device_client, publish_all, register, services, wait_for

from geofence import service
from geofence.service import EVENTS_CHANNEL, POSITIONS_STREAM, STATE_KEY, GeofenceWorker
from geofence.state import DeviceState
from kernel.endpoints import Endpoints
from kernel.keys import INGEST_STREAM
from kernel.records import Source, Telemetry
from kernel.wire import FIELD, FORMAT, StreamEntry, encode_entry

pytestmark = pytest.mark.integration

GEO_TABLES = "zones, zone_deletions, zone_events, trips, device_service, utilization_hourly"
LON0, LAT0 = 13.40, 52.50
KX = 111_320.0 * math.cos(math.radians(LAT0))
EVENTS = (
    "SELECT kind, coalesce(violation, '') FROM zone_events WHERE device_id = %s AND zone_id = %s ORDER BY time, kind"
)
NO_RIDE_ENTRY = [("enter", ""), ("violation", "entered_no_ride")]


def lonlat(x_m: float, y_m: float = 50.0) -> tuple[float, float]:
    return LON0 + x_m / KX, LAT0 + y_m / 111_320.0


def square(x0: float, x1: float, y0: float = 0.0, y1: float = 100.0) -> dict:
    ring = [lonlat(x0, y0), lonlat(x1, y0), lonlat(x1, y1), lonlat(x0, y1), lonlat(x0, y0)]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


@pytest.fixture
def geo(clean: Endpoints, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Endpoints, TestClient]]:
    monkeypatch.setattr(service, "ZONE_POLL_S", 0.1)
    monkeypatch.setattr(service, "ROLLUP_TICK_S", 0.5)
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {GEO_TABLES}")
    with api_client(clean) as api:
        yield clean, api


@contextmanager
def geofence_worker(endpoints: Endpoints, consumer: str = "geofence-test") -> Iterator[GeofenceWorker]:
    stop = threading.Event()
    own = endpoints.for_service("geofence")  # its own accounts, as `fleet geofence` runs: the ACL is tested too
    worker = GeofenceWorker(own.redis_url, own.database_url, consumer=consumer)
    thread = threading.Thread(target=worker.run, args=(stop,), name="geofence")
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=15)


class Device:
    """One simulated vehicle publishing JSON v1 reports at its own clock."""

    def __init__(self, client, device_id: str, t0: datetime) -> None:
        self.client, self.id, self.t = client, device_id, t0

    def report(self, *points: tuple[float, bool | None, float | None], step_s: float = 5.0) -> float:
        """(x metres, locked, speed km/h) points, `step_s` apart; returns the last point's epoch time."""
        messages = []
        for x, locked, speed in points:
            self.t += timedelta(seconds=step_s)
            lon, lat = lonlat(x)
            body = {"v": 1, "id": self.id, "ts": self.t.isoformat(), "lat": lat, "lon": lon, "locked": locked}
            if speed is not None:
                body["speed_kmh"] = speed
            messages.append((f"fleet/{self.id}/telemetry", orjson.dumps(body)))
        publish_all(self.client, messages)
        return self.t.timestamp()


def events(url: str, device_id: str, zone_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(EVENTS, (device_id, zone_id)).fetchall()]


def processed_until(url: str, device_id: str, t: float) -> bool:
    client = redis.Redis.from_url(url)
    try:
        raw = client.hget(STATE_KEY, device_id)
    finally:
        client.close()
    return raw is not None and DeviceState.from_bytes(raw).time >= t - 1e-6


def test_zone_events_violations_cross_and_a_restart_without_false_events(geo) -> None:
    endpoints, api = geo
    for body in (
        {"id": "nr", "kind": "no_ride", "geometry": square(0, 100)},
        {"id": "np", "kind": "no_parking", "geometry": square(300, 400)},
        {"id": "slow", "kind": "slow", "speed_limit_kmh": 10, "geometry": square(600, 700)},
        {"id": "thin", "kind": "no_ride", "geometry": square(900, 920, -50, 150)},
    ):
        assert api.post("/v1/zones", json=body).status_code == 201
    ids = ["g-ride", "g-park", "g-speed", "g-cross"]
    creds = register(endpoints, ids)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    bus = redis.Redis.from_url(endpoints.redis_url)
    channel = bus.pubsub(ignore_subscribe_messages=True)
    channel.subscribe(EVENTS_CHANNEL)
    try:
        with services(endpoints), geofence_worker(endpoints):
            with (
                device_client(endpoints, "g-ride", creds["g-ride"]) as c1,
                device_client(endpoints, "g-park", creds["g-park"]) as c2,
            ):
                ride, park = Device(c1, "g-ride", t0), Device(c2, "g-park", t0)
                ride.report((-100, False, 15), (-50, False, 15), (-20, False, 15), (10, False, 15), (40, False, 15))
                park.report((250, False, 12), (320, False, 12), (350, True, 0), (350, True, 0), (351, True, 0))
                with device_client(endpoints, "g-speed", creds["g-speed"]) as c3:
                    Device(c3, "g-speed", t0).report((550, False, 25), (620, False, 25), (640, False, 25))
                with device_client(endpoints, "g-cross", creds["g-cross"]) as c4:
                    Device(c4, "g-cross", t0).report((850, False, 15), (1000, False, 15), step_s=30)
                url = endpoints.database_url
                wait_for(lambda: len(events(url, "g-cross", "thin")) == 2, what="cross events")
                wait_for(lambda: len(events(url, "g-park", "np")) == 2, what="parking events")
                wait_for(lambda: len(events(url, "g-speed", "slow")) == 2, what="speeding events")
                wait_for(lambda: len(events(url, "g-ride", "nr")) == 2, what="no-ride events")

                assert events(url, "g-ride", "nr") == NO_RIDE_ENTRY
                assert events(url, "g-park", "np") == [("enter", ""), ("violation", "locked_in_no_parking")]
                assert events(url, "g-speed", "slow") == [("enter", ""), ("violation", "speeding_in_slow_zone")]
                assert events(url, "g-cross", "thin") == [("cross", ""), ("violation", "crossed_no_ride")]
                with psycopg.connect(url) as conn:
                    (detail,) = conn.execute(
                        "SELECT detail FROM zone_events WHERE device_id = 'g-speed' AND kind = 'violation'"
                    ).fetchone()
                assert detail["speed_kmh"] == 25 and detail["limit_kmh"] == 10

                live = _drain(channel, expected=8)
                assert {(m["device_id"], m["zone_id"], m["kind"], m["violation"]) for m in live} >= {
                    ("g-ride", "nr", "enter", None),
                    ("g-ride", "nr", "violation", "entered_no_ride"),
                    ("g-cross", "thin", "cross", None),
                }
                (parked,) = api.get("/v1/events", params={"device_id": "g-park", "kind": "violation"}).json()
                assert parked["violation"] == "locked_in_no_parking" and parked["zone_id"] == "np"

            # the worker restarts (a new instance, state from Redis); the ride goes on inside, then out
            with geofence_worker(endpoints), device_client(endpoints, "g-ride", creds["g-ride"]) as c1:
                ride.client = c1
                last = ride.report((50, False, 15), (60, False, 15))
                wait_for(lambda: processed_until(endpoints.redis_url, "g-ride", last), what="restart batch")
                assert events(endpoints.database_url, "g-ride", "nr") == NO_RIDE_ENTRY
                ride.report((200, False, 15))
                wait_for(lambda: len(events(endpoints.database_url, "g-ride", "nr")) == 3, what="exit")
                assert events(endpoints.database_url, "g-ride", "nr")[-1] == ("exit", "")
    finally:
        channel.close()
        bus.close()


def test_zones_added_changed_and_removed_while_running(geo) -> None:
    endpoints, api = geo
    creds = register(endpoints, ["g-zone"])
    url = endpoints.database_url
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    with (
        services(endpoints),
        geofence_worker(endpoints) as worker,
        device_client(endpoints, "g-zone", creds["g-zone"]) as client,
    ):
        bike = Device(client, "g-zone", t0)
        last = bike.report((2000, True, 0))
        wait_for(lambda: processed_until(endpoints.redis_url, "g-zone", last), what="first fix")

        added = {"id": "late", "kind": "no_parking", "geometry": square(1950, 2050)}
        assert api.post("/v1/zones", json=added).status_code == 201
        wait_for(lambda: "late" in worker.zones, what="zone added")
        bike.report((2000, True, 0))
        wait_for(lambda: len(events(url, "g-zone", "late")) == 2, what="enter after the zone appeared")
        assert events(url, "g-zone", "late") == [("enter", ""), ("violation", "locked_in_no_parking")]

        moved = {"kind": "no_parking", "geometry": square(2950, 3050)}
        assert api.put("/v1/zones/late", json=moved).status_code == 200
        wait_for(lambda: _west_edge(worker, "late") > lonlat(2900)[0], what="zone changed")
        bike.report((2000, True, 0))
        wait_for(lambda: len(events(url, "g-zone", "late")) == 3, what="exit after the zone moved away")
        assert events(url, "g-zone", "late")[-1] == ("exit", "")

        assert api.delete("/v1/zones/late").status_code == 204
        wait_for(lambda: "late" not in worker.zones, what="zone removed")
        last = bike.report((3000, True, 0), (3000, True, 0))  # inside where the zone was
        wait_for(lambda: processed_until(endpoints.redis_url, "g-zone", last), what="points after removal")
        assert len(events(url, "g-zone", "late")) == 3


def test_a_ride_becomes_a_trip_and_utilization_counts_it(geo) -> None:
    """Two vehicles: one in service rides unlock → 4 minutes → lock; the other is in maintenance."""
    endpoints, api = geo
    creds = register(endpoints, ["g-u1", "g-u2"])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    for device_id, status in (("g-u1", "in_service"), ("g-u2", "maintenance")):
        reply = api.put(f"/v1/devices/{device_id}/service", json={"status": status, "since": t0.isoformat()})
        assert reply.status_code == 200
    with services(endpoints), geofence_worker(endpoints):
        with device_client(endpoints, "g-u1", creds["g-u1"]) as client:
            bike = Device(client, "g-u1", t0)
            bike.report((0, True, 0))  # parked, locked
            bike.report(*[(25.0 * i, False, 18) for i in range(1, 50)])  # 49 unlocked reports, 5 s apart
            bike.report((1250, True, 0))  # locked: the trip ends here
            url = endpoints.database_url
            trips = "SELECT count(*) FROM trips WHERE device_id = 'g-u1' AND NOT ongoing"
            wait_for(lambda: _scalar(url, trips) == 1, what="a finished trip")
        checked_at = time.time()

    (trip,) = api.get("/v1/trips", params={"device_id": "g-u1"}).json()
    start = t0 + timedelta(seconds=10)
    assert trip["start_time"] == start.isoformat().replace("+00:00", "Z")
    assert trip["duration_s"] == 245 and trip["points"] == 50 and not trip["ongoing"]
    assert trip["distance_m"] == pytest.approx(1225, rel=5e-3)
    assert trip["start"] == pytest.approx(list(lonlat(25))) and trip["end"] == pytest.approx(list(lonlat(1250)))

    window = {"from": (t0 - timedelta(hours=1)).isoformat(), "to": (t0 + timedelta(hours=2)).isoformat()}
    total = api.get("/v1/utilization", params=window).json()["total"]
    assert total["ride_hours"] == pytest.approx(245 / 3600, abs=1e-9)
    assert total["vehicles_in_service"] == 1 and total["vehicles_in_maintenance"] == 1
    in_service_s = total["in_service_hours"] * 3600
    assert 20 * 60 - 5 <= in_service_s <= checked_at + 1 - t0.timestamp()  # t0 until the last refresh
    assert total["maintenance_hours"] == pytest.approx(total["in_service_hours"], abs=5 / 3600)
    assert total["utilization"] == pytest.approx(245 / in_service_s)


def test_bad_entries_and_positions_are_skipped_and_the_worker_goes_on(geo) -> None:
    """Entries written straight into `fleet:positions`: a corrupt one, one with an impossible point
    next to a good one; the good point is geofenced, the rest skipped, every entry acknowledged."""
    endpoints, api = geo
    assert api.post("/v1/zones", json={"id": "nr", "kind": "no_ride", "geometry": square(0, 100)}).status_code == 201
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    lon, lat = lonlat(50)
    good = Telemetry("g-bad", t, Source.JSON, lat=lat, lon=lon, locked=False)
    impossible = Telemetry("g-bad", t + timedelta(seconds=1), Source.JSON, lat=95.0, lon=lon)
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        client.xadd(POSITIONS_STREAM, {FIELD: b"\x93not msgpack"})
        client.xadd(POSITIONS_STREAM, {b"wrong field": b""})
        client.xadd(POSITIONS_STREAM, {FIELD: encode_entry(StreamEntry(FORMAT, [impossible, good], [t, t], []))})
        with geofence_worker(endpoints) as worker:
            wait_for(lambda: processed_until(endpoints.redis_url, "g-bad", t.timestamp()), what="good point")
            wait_for(lambda: client.xlen(POSITIONS_STREAM) == 0, what="every entry acknowledged and deleted")
            assert worker.stats.skipped == 3 and worker.stats.positions == 1
        assert events(endpoints.database_url, "g-bad", "nr") == [("enter", "")]  # first fix: no violation
    finally:
        client.close()


def _west_edge(worker: GeofenceWorker, zone_id: str) -> float:
    slot = worker.zones.slot(zone_id)
    return -180.0 if slot is None else worker.zones.zone(slot).geometry.bounds[0]


def _drain(channel: redis.client.PubSub, expected: int, timeout: float = 5.0) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        message = channel.get_message(timeout=0.1)
        if message is not None:
            out.append(orjson.loads(message["data"]))
    return out


def _scalar(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def test_positions_taken_in_ingest_order(geo: tuple[Endpoints, TestClient]) -> None:
    """Two ingest workers commit in any order: a device's later batch can reach fleet:positions first.
    The worker holds it until the ingest group has nothing earlier pending, then takes both in
    fleet:ingest order: outside, then inside a no-ride zone is an entry with a violation (taken the
    other way round it would be a first fix inside, and the older point ignored)."""
    endpoints, api = geo
    assert api.post("/v1/zones", json={"id": "nr", "kind": "no_ride", "geometry": square(0, 100)}).status_code == 201
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    outside, inside = lonlat(-300), lonlat(50)
    first = Telemetry("g-ord", t, Source.JSON, lat=outside[1], lon=outside[0], locked=False)
    later = Telemetry("g-ord", t + timedelta(seconds=10), Source.JSON, lat=inside[1], lon=inside[0], locked=False)
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        client.xgroup_create(INGEST_STREAM, "ingest", id="0", mkstream=True)
        a, b = client.xadd(INGEST_STREAM, {b"x": b"1"}), client.xadd(INGEST_STREAM, {b"x": b"2"})
        client.xreadgroup("ingest", "ingest-test", {INGEST_STREAM: ">"}, count=2)  # both in flight
        client.xack(INGEST_STREAM, "ingest", b)  # the second ingest worker commits first
        client.xadd(POSITIONS_STREAM, {FIELD: encode_entry(StreamEntry(FORMAT, [later], [t], [])), b"s": b})
        with geofence_worker(endpoints):
            time.sleep(1.0)  # the worker has read it, and holds it
            assert client.hget(STATE_KEY, "g-ord") is None
            client.xadd(POSITIONS_STREAM, {FIELD: encode_entry(StreamEntry(FORMAT, [first], [t], [])), b"s": a})
            client.xack(INGEST_STREAM, "ingest", a)
            wait_for(lambda: processed_until(endpoints.redis_url, "g-ord", later.time.timestamp()), what="both")
        assert events(endpoints.database_url, "g-ord", "nr") == NO_RIDE_ENTRY
    finally:
        # the stand-in ingest entries go, as ingest deletes what it stored: later modules share the stream
        client.delete(INGEST_STREAM)
        client.close()
