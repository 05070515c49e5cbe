"""Trip detection: unlock-to-lock rides, movement-only trackers, and parked jitter that is no trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geofence.batch import PositionBatch
from geofence.trips import TripParams, detect_trips, haversine_m

LAT0 = 52.5
KX = 111_320.0 * math.cos(math.radians(LAT0))


def test_haversine_known_distances() -> None:
    assert haversine_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(111_195.0, rel=1e-4)
    assert haversine_m(13.4, 52.5, 13.4, 52.5) == 0.0
    assert haversine_m(179.9, 0.0, -179.9, 0.0) == pytest.approx(22_239.0, rel=1e-3)  # across the antimeridian
    d = haversine_m(np.array([0.0, 10.0]), np.array([0.0, 0.0]), np.array([0.0, 10.0]), np.array([0.0, 0.0]))
    assert d.tolist() == [0.0, 0.0]


def ride(t0: float, seconds: int, dx_m: float, device: int = 0, step: float = 10.0):
    t = t0 + np.arange(0, seconds + 1, step)
    lon = 13.4 + np.linspace(0, dx_m, len(t)) / KX
    return [(device, ti, x, LAT0) for ti, x in zip(t, lon, strict=True)]


def make(rows, speeds=None, locks=None, ids=("a", "b")) -> PositionBatch:
    dev, t, lon, lat = zip(*rows, strict=True)
    return PositionBatch.from_columns(ids, dev, t, lon, lat, speeds, locks)


def test_unlock_to_lock_is_one_trip_with_distance_and_duration() -> None:
    rows = [*ride(1000, 600, 2000), (0, 1610, 13.4 + 2000 / KX, LAT0)]
    locks = [0] * (len(rows) - 1) + [1]
    (trip,) = detect_trips(make(rows, locks=locks))
    assert trip.device_id == "a" and not trip.ongoing
    assert trip.start.timestamp() == 1000 and trip.end.timestamp() == 1610 and trip.duration_s == 610
    assert trip.distance_m == pytest.approx(2000, rel=2e-3)
    assert (trip.start_lon, trip.end_lon) == (13.4, pytest.approx(13.4 + 2000 / KX))
    assert trip.points == len(rows)


def test_parked_jitter_is_not_a_trip() -> None:
    rng = np.random.default_rng(0)
    n = 400  # a tracker without lock state, 30 s reports, 5-10 m of GPS noise for over three hours
    t = np.arange(n) * 30.0
    lon = 13.4 + rng.normal(0, 8, n) / KX
    lat = LAT0 + rng.normal(0, 8, n) / 111_320
    speed = np.abs(rng.normal(0, 1.5, n))
    assert detect_trips(PositionBatch.from_columns(["a"], np.zeros(n, int), t, lon, lat, speed)) == []
    # reported speed missing: the speed implied by the jumps decides, and jitter with spikes is filtered
    spiky = lon.copy()
    spiky[::50] += 60 / KX
    assert detect_trips(PositionBatch.from_columns(["a"], np.zeros(n, int), t, spiky, lat)) == []


def test_unlocked_but_standing_still_is_no_trip() -> None:
    rows = [(0, float(t), 13.4, LAT0) for t in range(0, 300, 10)] + [(0, 300.0, 13.4, LAT0)]
    locks = [0] * 30 + [1]
    assert detect_trips(make(rows, locks=locks)) == []


def test_movement_only_tracker_and_a_gap_splits_trips() -> None:
    first = ride(0, 300, 1500)
    second = ride(2000, 300, 1500)  # 1700 s of silence in between
    rows = first + second
    trips = detect_trips(make(rows, speeds=[18.0] * len(rows)))
    assert [(t.start.timestamp(), t.end.timestamp()) for t in trips] == [(0, 300), (2000, 2300)]
    assert trips[0].ongoing is False and trips[1].ongoing is True  # data ends while still moving


def test_devices_are_separate_and_input_order_does_not_matter() -> None:
    rows = ride(0, 300, 1500, device=0) + ride(0, 300, 1200, device=1)
    order = np.random.default_rng(2).permutation(len(rows))
    shuffled = [rows[i] for i in order]
    trips = detect_trips(make(shuffled, speeds=[20.0] * len(rows)))
    assert sorted((t.device_id, round(t.distance_m, -1)) for t in trips) == [("a", 1500.0), ("b", 1200.0)]


def test_thresholds_are_parameters() -> None:
    rows = ride(0, 50, 80)
    assert detect_trips(make(rows, speeds=[6.0] * len(rows))) == []
    relaxed = TripParams(min_duration_s=10, min_distance_m=10, min_radius_m=10)
    assert len(detect_trips(make(rows, speeds=[6.0] * len(rows)), relaxed)) == 1
    assert detect_trips(PositionBatch.from_columns([], [], [], [], [])) == []
