"""GBFS 3.0 and MDS 2.0 documents (pure) against the official schemas, and the GBFS id rotation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from feeds_oracle import gbfs_errors, mds_errors
from hypothesis import given
from hypothesis import strategies as st

from api import mobility
from api.mobility import PublicId, SystemInfo

NOW = 1_780_000_000.0
INFO = SystemInfo()
SQUARE = [[[13.40, 52.50], [13.41, 52.50], [13.41, 52.51], [13.40, 52.51], [13.40, 52.50]]]


def test_static_feeds_are_valid_gbfs() -> None:
    assert gbfs_errors("gbfs", mobility.discovery("http://127.0.0.1:8000/gbfs/3.0", NOW)) == []
    assert gbfs_errors("system_information", mobility.system_information(INFO, NOW)) == []
    assert gbfs_errors("vehicle_types", mobility.vehicle_types(INFO, NOW)) == []


def test_zones_become_valid_geofencing_zones_with_rules_by_kind() -> None:
    zones = [
        {"id": "area", "kind": "service_area", "name": "City", "speed_limit_kmh": None,
         "geometry": {"type": "Polygon", "coordinates": SQUARE}},
        {"id": "park", "kind": "no_parking", "name": "", "speed_limit_kmh": None,
         "geometry": {"type": "MultiPolygon", "coordinates": [SQUARE]}},
        {"id": "slow", "kind": "slow", "name": "Market", "speed_limit_kmh": 12.5,
         "geometry": {"type": "Polygon", "coordinates": SQUARE}},
        {"id": "ban", "kind": "no_ride", "name": "Park", "speed_limit_kmh": None,
         "geometry": {"type": "Polygon", "coordinates": SQUARE}},
    ]  # fmt: skip
    doc = mobility.geofencing_zones(zones, INFO, NOW)
    assert gbfs_errors("geofencing_zones", doc) == []
    features = doc["data"]["geofencing_zones"]["features"]
    rules = [f["properties"]["rules"][0] for f in features]
    assert [r["ride_through_allowed"] for r in rules] == [False, True, True, True]  # no_ride first: it wins
    assert rules[1]["ride_end_allowed"] is False and rules[2]["maximum_speed_kph"] == 12
    assert all(f["geometry"]["type"] == "MultiPolygon" for f in features)
    assert doc["data"]["global_rules"] == [
        {"ride_start_allowed": False, "ride_end_allowed": False, "ride_through_allowed": True}
    ]


@given(
    st.fixed_dictionaries(
        {"lon": st.floats(-180, 180), "lat": st.floats(-90, 90)},
        optional={"battery_pct": st.floats(-10, 150), "ts": st.floats(1.6e9, 1.9e9), "locked": st.booleans()},
    ),
    st.booleans(),
)
def test_any_parked_vehicle_is_valid_gbfs(state: dict[str, object], disabled: bool) -> None:
    vehicle = mobility.gbfs_vehicle("x1", state, disabled)
    assert vehicle is not None
    assert gbfs_errors("vehicle_status", mobility.envelope({"vehicles": [vehicle]}, NOW, 30)) == []


def test_ids_rotate_after_each_trip_and_hold_between_trips() -> None:
    counter = itertools.count()

    def new_id() -> str:
        return f"p{next(counter)}"

    t1 = datetime(2026, 1, 1, 8, tzinfo=UTC)
    first = mobility.rotate({}, {}, ["a", "b"], new_id)
    assert {k: v.public_id for k, v in first.items()} == {"a": "p0", "b": "p1"}
    assert mobility.rotate(first, {}, ["a", "b"], new_id) == {}  # no trip: the same ids
    after = mobility.rotate(first, {"a": t1}, ["a", "b"], new_id)
    assert after == {"a": PublicId("p2", t1)}
    held = {**first, **after}
    assert mobility.rotate(held, {"a": t1}, ["a", "b"], new_id) == {}  # the same last trip: kept
    assert mobility.rotate(held, {"a": t1 + timedelta(hours=1)}, ["a"], new_id)["a"].public_id == "p3"


def test_vehicles_in_a_rental_and_stale_ones_are_told_apart() -> None:
    assert mobility.in_rental({"locked": True}, ongoing=True)
    assert mobility.in_rental({"locked": False}, ongoing=False)
    assert not mobility.in_rental({"locked": True}, ongoing=False)
    assert mobility.is_fresh({"seen": NOW - 299}, NOW) and not mobility.is_fresh({"seen": NOW - 301}, NOW)
    assert not mobility.is_fresh({}, NOW)


def test_mds_vehicles_and_telemetry_are_valid_provider_answers() -> None:
    vehicles = {"version": "2.0.0", "last_updated": mobility.millis(NOW), "ttl": 60_000, "links": {"next": None},
                "vehicles": [mobility.mds_vehicle(INFO, "bike-1")]}  # fmt: skip
    assert mds_errors("/vehicles", vehicles) == []
    t = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    extra = {"altitude_m": 40.0, "heading_deg": 90.0, "accuracy_m": 3.0, "satellites": 9, "speed_kmh": 18.0,
             "battery_pct": 77.6}  # fmt: skip
    in_trip = mobility.mds_telemetry(INFO, "bike-1", t, 13.4, 52.5, extra, t - timedelta(minutes=5))
    parked = mobility.mds_telemetry(INFO, "bike-1", t, 13.4, 52.5, {}, None)
    assert mds_errors("/telemetry", {"version": "2.0.0", "telemetry": [in_trip, parked]}) == []
    assert in_trip["location"]["speed"] == 5.0 and in_trip["battery_percent"] == 78
    assert in_trip["device_id"] == mobility.mds_device_id("bike-1") and in_trip["timestamp"] == mobility.millis(
        t.timestamp()
    )
    assert mds_errors("/telemetry", {"version": "2.0.0", "telemetry": [{**parked, "timestamp": 5}]}) != []
