"""Trips across batches: the stitched result equals `detect_trips` over all the data at once."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.batch import PositionBatch
from geofence.errors import StateError
from geofence.tripcursor import TripCursor, continue_trips, positions, rollup_since
from geofence.trips import Trip, TripParams, detect_trips
from kernel.records import Source, Telemetry

LAT0 = 52.5
KX = 111_320.0 * math.cos(math.radians(LAT0))
FAR_FUTURE = 1e12
PARAMS = TripParams()


def _rows(steps: list[tuple[int, float, int, int]]) -> list[tuple[int, float, float, float, float, int]]:
    """(device, dt, dx metres, lock) steps → (device, t, lon, lat, speed, lock) rows in time order."""
    rows, clock, x = [], {0: 1000.0, 1: 1000.0}, {0: 0.0, 1: 0.0}
    for dev, dt, dx, lock in steps:
        clock[dev] += dt
        x[dev] += dx
        rows.append((dev, clock[dev], 13.4 + x[dev] / KX, LAT0 + dev * 0.01, math.nan, lock))
    return rows


def _batch(rows) -> PositionBatch:
    if not rows:
        return PositionBatch.from_columns(("a", "b"), [], [], [], [], [], [])
    dev, t, lon, lat, speed, lock = zip(*rows, strict=True)
    return PositionBatch.from_columns(("a", "b"), dev, t, lon, lat, speed, lock)


def _stitched(rows, cuts: list[int]) -> dict[tuple[str, datetime], Trip]:
    """Run batch by batch, cursors round-tripped through bytes as through Redis; the table's rows."""
    table: dict[tuple[str, datetime], Trip] = {}
    stored: dict[str, bytes] = {}
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for lo, hi in itertools.pairwise(bounds):
        cursors = {d: TripCursor.from_bytes(b) for d, b in stored.items()}
        trips, new = continue_trips(cursors, _batch(rows[lo:hi]), FAR_FUTURE, PARAMS)
        for trip in trips:
            table[trip.device_id, trip.start] = trip  # the upsert
        stored.update({d: c.to_bytes() for d, c in new.items()})
    return table


def _same(a: Trip, b: Trip) -> bool:
    exact = (a.device_id, a.start, a.end, a.points, a.ongoing) == (b.device_id, b.start, b.end, b.points, b.ongoing)
    return exact and math.isclose(a.distance_m, b.distance_m, rel_tol=1e-9, abs_tol=1e-6)


step = st.tuples(
    st.integers(0, 1),  # device
    st.sampled_from([5.0, 10.0, 30.0, 400.0]),  # seconds since the device's last report (400: a gap)
    st.sampled_from([0.0, 2.0, 60.0, 150.0]),  # metres moved
    st.sampled_from([0, 0, 0, 1, -1]),  # unlocked, locked, unknown (speed from the step decides)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=80), st.lists(st.integers(0, 80), max_size=8))
def test_trips_cut_into_batches_equal_trips_over_all_data(steps, cuts) -> None:
    rows = _rows(steps)
    whole = {(t.device_id, t.start): t for t in detect_trips(_batch(rows), PARAMS)}
    stitched = _stitched(rows, [c for c in cuts if c < len(rows)])
    assert set(stitched) == set(whole)
    for key, trip in whole.items():
        assert _same(stitched[key], trip), (stitched[key], trip)


def test_unlock_ride_lock_over_three_batches() -> None:
    ride = [(0, 10.0, 50.0, 0)] * 30 + [(0, 10.0, 0.0, 1)]  # 5 minutes at 18 km/h, then the lock
    rows = _rows([(0, 0.0, 0.0, 1), *ride])
    table = _stitched(rows, [8, 20])
    (trip,) = table.values()
    assert not trip.ongoing
    assert trip.start.timestamp() == 1010.0 and trip.end.timestamp() == 1310.0
    assert trip.points == 31 and trip.distance_m == pytest.approx(29 * 50, rel=2e-3)  # unlock to lock


def test_an_ongoing_trip_is_reported_once_it_qualifies_and_grows() -> None:
    rows = _rows([(0, 0.0, 0.0, 1), *[(0, 10.0, 50.0, 0)] * 10])
    trips, cursors = continue_trips({}, _batch(rows), FAR_FUTURE, PARAMS)
    (trip,) = trips
    assert trip.ongoing and trip.duration_s == 90.0
    assert cursors["a"].active and cursors["a"].points == 10
    more = _rows([(0, 0.0, 0.0, 1), *[(0, 10.0, 50.0, 0)] * 12])[-2:]
    grown, _ = continue_trips(cursors, _batch(more), FAR_FUTURE, PARAMS)
    assert grown[0].start == trip.start and grown[0].duration_s == 110.0 and grown[0].points == 12


def test_replayed_and_future_points_do_not_move_the_cursor() -> None:
    rows = _rows([(0, 0.0, 0.0, 0), (0, 10.0, 50.0, 0)])
    _, cursors = continue_trips({}, _batch(rows), FAR_FUTURE, PARAMS)
    again, same = continue_trips(cursors, _batch(rows), FAR_FUTURE, PARAMS)
    assert again == [] and same == {}
    future = [(0, 5000.0, 13.5, LAT0, math.nan, 0)]
    assert continue_trips(cursors, _batch(future), latest=2000.0, params=PARAMS) == ([], {})


def test_rollup_window_starts_at_the_new_part_of_a_known_trip() -> None:
    start = datetime.fromtimestamp(1000, UTC)
    trip = Trip("a", start, start + timedelta(seconds=600), 0, 0, 0, 0, 3000.0, 600.0, 60, ongoing=True)
    known = TripCursor(1500.0, 0, 0, True, 1000.0, 0, 0, 2500.0, 900.0, 50)
    young = TripCursor(1030.0, 0, 0, True, 1000.0, 0, 0, 80.0, 70.0, 4)  # not stored before: too short
    assert rollup_since([trip], {"a": known}, PARAMS) == 1500.0
    assert rollup_since([trip], {"a": young}, PARAMS) == 1000.0
    assert rollup_since([trip], {}, PARAMS) == 1000.0
    assert rollup_since([], {}, PARAMS) is None


def test_cursor_bytes_round_trip_and_corrupt_bytes_are_refused() -> None:
    cursor = TripCursor(1.5, 13.4, 52.5, True, 1.0, 13.3, 52.4, 10.0, 5.0, 3)
    assert TripCursor.from_bytes(cursor.to_bytes()) == cursor
    for bad in (b"", b"\x93\x01\x02", TripCursor(1.0, 0, 0).to_bytes()[:-3], b"\x92\x07\x00"):
        with pytest.raises(StateError):
            TripCursor.from_bytes(bad)


def test_positions_skips_bad_coordinates_without_refusing_the_batch() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        Telemetry("a", t, Source.JSON, lat=52.5, lon=13.4, locked=False),
        Telemetry("a", t + timedelta(seconds=1), Source.JSON, lat=95.0, lon=13.4),
        Telemetry("b", t, Source.JSON, lat=math.nan, lon=13.4),
        Telemetry("b", t, Source.JSON, battery_pct=50.0),  # no position: not a position, not refused
    ]
    batch, dropped = positions(records)
    assert dropped == 2 and len(batch) == 1 and batch.device_ids == ("a",)
    assert np.array_equal(batch.locked, [0])
