"""Zone events from consecutive batches: table-driven cases and a restart property."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.batch import PositionBatch
from geofence.errors import BatchError, StateError
from geofence.state import DeviceState
from geofence.transitions import EventKind, TransitionParams, Violation, ZoneEvent, transitions
from geofence.zones import ZoneKind, parse_zone
from geofence.zoneset import ZoneSet

LON0, LAT0 = 13.40, 52.50
KX = 111_320.0 * math.cos(math.radians(LAT0))


def lonlat(x_m: float, y_m: float) -> tuple[float, float]:
    return LON0 + x_m / KX, LAT0 + y_m / 111_320.0


def square_zone(zone_id: str, kind: str, x0: float, y0: float, x1: float, y1: float, **kw: float):
    corners = [lonlat(x0, y0), lonlat(x1, y0), lonlat(x1, y1), lonlat(x0, y1), lonlat(x0, y0)]
    return parse_zone({"type": "Polygon", "coordinates": [[list(c) for c in corners]]}, id=zone_id, kind=kind, **kw)


ZONES = ZoneSet(
    [
        square_zone("np", "no_parking", 0, 0, 100, 100),
        square_zone("slow", "slow", 300, 0, 400, 100, speed_limit_kmh=10.0),
        square_zone("nr", "no_ride", 600, 0, 650, 100),
        square_zone("svc", "service_area", -1000, -1000, 2000, 1000),
    ],
    hysteresis_m=10.0,
)


def batch(points: Sequence[tuple], devices: Sequence[str] = ("d1",)) -> PositionBatch:
    """points: (device index, t, x_m, y_m[, speed, locked])"""
    rows = [(*p, *(np.nan, -1)[len(p) - 4 :]) if len(p) < 6 else p for p in points]
    dev, t, x, y, speed, locked = zip(*rows, strict=True)
    lon, lat = zip(*(lonlat(a, b) for a, b in zip(x, y, strict=True)), strict=True)
    return PositionBatch.from_columns(devices, dev, t, lon, lat, speed, locked)


def kinds(events: list[ZoneEvent], zone: str | None = None) -> list[tuple[float, str, str]]:
    return [(e.time.timestamp(), e.zone_id, e.kind.value) for e in events if zone in (None, e.zone_id)]


def run(points: Sequence[tuple], prev=None, params: TransitionParams | None = None, zones: ZoneSet = ZONES):
    return transitions(prev or {}, batch(points), zones, now=10_000.0, params=params)


def test_enter_and_exit_with_hysteresis() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-50, 50), zones=(_svc(),))}
    events, state = run([(0, 10, -50, 50), (0, 20, 20, 50), (0, 30, -5, 50), (0, 40, 30, 50), (0, 50, -30, 50)], known)
    assert kinds(events, "np") == [(20, "np", "enter"), (50, "np", "exit")]
    assert [m.zone_id for m in state["d1"].zones] == ["svc"]


def _svc():
    from geofence.state import Membership

    return Membership("svc", 0.0, dwell_fired=True)


def test_gps_jitter_on_a_border_is_one_enter_and_no_storm() -> None:
    rng = np.random.default_rng(1)
    pts = [(0, float(i), float(rng.choice([-3.0, 3.0]) + rng.normal(0, 1)), 50.0) for i in range(1, 200)]
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-50, 50), zones=(_svc(),))}
    events, state = run(pts, known)
    assert kinds(events, "np") == [(next(p[1] for p in pts if p[2] >= 0), "np", "enter")]
    assert "np" in {m.zone_id for m in state["d1"].zones}


def test_cross_between_sparse_reports() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-100, 50), zones=(_svc(),))}
    events, _ = run([(0, 30, 200, 50), (0, 60, 500, 50), (0, 90, 700, 50)], known)
    assert kinds(events) == [(30, "np", "cross"), (60, "slow", "cross"), (90, "nr", "cross"), (90, "nr", "violation")]
    crossed = next(e for e in events if e.kind is EventKind.CROSS)
    assert crossed.detail["from_time"] == 0.0 and crossed.detail["zone_kind"] == "no_parking"


def test_no_cross_when_the_gap_is_too_long_to_trust_a_straight_line() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-100, 50), zones=(_svc(),))}
    events, _ = run([(0, 3600, 200, 50)], known)
    assert kinds(events) == []


def test_dwell_fires_once_per_stay_also_across_batches() -> None:
    params = TransitionParams(dwell_s=60)
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-50, 50), zones=(_svc(),))}
    e1, s1 = run([(0, 10, 50, 50), (0, 40, 50, 50)], known, params)
    e2, s2 = run([(0, 70, 50, 50), (0, 100, 50, 50)], s1, params)
    e3, _ = run([(0, 130, 50, 50), (0, 140, -50, 50), (0, 150, 50, 50), (0, 250, 50, 50)], s2, params)
    assert kinds(e1, "np") == [(10, "np", "enter")]
    assert kinds(e2, "np") == [(70, "np", "dwell")]
    assert kinds(e3, "np") == [(140, "np", "exit"), (150, "np", "enter"), (250, "np", "dwell")]
    assert [e.detail["since"] for e in e2 + e3 if e.kind is EventKind.DWELL] == [10.0, 150.0]


def test_locked_in_no_parking_is_a_violation_on_each_parking() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(-50, 50), zones=(_svc(),))}
    pts = [
        (0, 10, 50, 50, 0, 0),
        (0, 20, 50, 50, 0, 1),
        (0, 30, 50, 50, 0, 1),
        (0, 40, 50, 50, 0, 0),
        (0, 50, 50, 50, 0, 1),
    ]
    events, state = run(pts, known)
    violations = [e for e in events if e.kind is EventKind.VIOLATION]
    assert [(v.time.timestamp(), v.detail["violation"]) for v in violations] == [
        (20, Violation.LOCKED_IN_NO_PARKING),
        (50, Violation.LOCKED_IN_NO_PARKING),
    ]
    assert state["d1"].zones[0].violating
    again, _ = run([(0, 60, 50, 50, 0, 1)], state)
    assert kinds(again) == []  # still the same parking: no new violation after a batch boundary


def test_speeding_in_a_slow_zone() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(250, 50), zones=(_svc(),))}
    pts = [
        (0, 10, 310, 50, 8.0, 0),
        (0, 20, 330, 50, 18.0, 0),
        (0, 30, 350, 50, 22.0, 0),
        (0, 40, 370, 50, 9.0, 0),
        (0, 50, 390, 50, 12.0, 0),
    ]
    events, _ = run(pts, known)
    speeding = [e for e in events if e.kind is EventKind.VIOLATION]
    assert [(e.time.timestamp(), e.detail["speed_kmh"], e.detail["limit_kmh"]) for e in speeding] == [
        (20, 18.0, 10.0),
        (50, 12.0, 10.0),
    ]


def test_entering_no_ride_and_leaving_the_service_area_are_violations() -> None:
    known = {"d1": DeviceState("d1", 0.0, *lonlat(550, 50), zones=(_svc(),))}
    events, _ = run([(0, 10, 620, 50), (0, 20, 700, 50), (0, 30, 2100, 50)], known)
    assert kinds(events) == [
        (10, "nr", "enter"),
        (10, "nr", "violation"),
        (20, "nr", "exit"),
        (30, "svc", "exit"),
        (30, "svc", "violation"),
    ]
    details = [e.detail["violation"] for e in events if e.kind is EventKind.VIOLATION]
    assert details == [Violation.ENTERED_NO_RIDE, Violation.LEFT_SERVICE_AREA]


def test_first_fix_enters_without_a_no_ride_violation() -> None:
    events, state = run([(0, 10, 620, 50)])
    assert kinds(events) == [(10, "nr", "enter"), (10, "svc", "enter")]
    assert all(e.detail["first_fix"] for e in events)
    quiet, state2 = run([(0, 10, 620, 50)], params=TransitionParams(enter_on_first_fix=False))
    assert quiet == [] and state2 == state


def test_stale_and_future_points_are_ignored() -> None:
    known = {"d1": DeviceState("d1", 100.0, *lonlat(-50, 50), zones=(_svc(),))}
    events, state = run([(0, 50, 50, 50), (0, 100, 50, 50), (0, 99_999, 50, 50)], known)
    assert events == [] and state == {}


def test_a_removed_zone_is_dropped_silently() -> None:
    _, state = run([(0, 10, 50, 50)])
    assert {m.zone_id for m in state["d1"].zones} == {"np", "svc"}
    events, state2 = run([(0, 20, 50, 50)], state, zones=ZONES.without_zones(["np"]))
    assert events == [] and {m.zone_id for m in state2["d1"].zones} == {"svc"}


def test_devices_are_independent_and_points_may_come_unsorted() -> None:
    pts = [(1, 20, 50, 50), (0, 20, 50, 50), (1, 10, -50, 50), (0, 10, 350, 50)]
    events, state = transitions({}, batch(pts, ("a", "b")), ZONES, now=1000.0)
    got = [(e.device_id, e.time.timestamp(), e.zone_id, e.kind.value) for e in events]
    assert ("a", 20, "slow", "exit") in got and ("a", 20, "np", "enter") in got
    assert ("b", 20, "np", "enter") in got and not any(d == "b" and z == "np" and t == 10 for d, t, z, _ in got)
    assert state["a"].time == 20 and state["b"].time == 20


def test_state_round_trips_and_corrupt_state_is_refused() -> None:
    _, state = run([(0, 10, 50, 50, 0, 1)])
    for s in state.values():
        assert DeviceState.from_bytes(s.to_bytes()) == s
    with pytest.raises(StateError):
        DeviceState.from_bytes(b"\x00garbage")
    with pytest.raises(StateError, match="format"):
        DeviceState.from_bytes(DeviceState("x", 1.0, 2.0, 3.0).to_bytes().replace(b"\x01", b"\x09", 1))


def test_bad_batches_are_refused() -> None:
    with pytest.raises(BatchError, match="valid lon/lat"):
        PositionBatch.from_columns(["a"], [0], [1.0], [200.0], [0.0])
    with pytest.raises(BatchError, match="same length"):
        PositionBatch.from_columns(["a"], [0, 0], [1.0], [0.0], [0.0])
    with pytest.raises(BatchError, match="device index"):
        PositionBatch.from_columns(["a"], [1], [1.0], [0.0], [0.0])
    with pytest.raises(BatchError, match="numeric"):
        PositionBatch.from_columns(["a"], [0], ["noon"], [0.0], [0.0])


walks = st.lists(
    st.tuples(st.floats(-300, 900), st.floats(-100, 200), st.floats(0, 30), st.sampled_from([-1, 0, 1])),
    min_size=2,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(walk=walks, cuts=st.lists(st.integers(1, 39), max_size=4))
def test_a_worker_restart_between_batches_changes_no_event(walk: list[tuple], cuts: list[int]) -> None:
    """One batch, or the same points cut into several with the state stored as bytes in between,
    give exactly the same events: a restart that restores state produces nothing false."""
    pts = [(0, 10.0 * (i + 1), x, y, v, lock) for i, (x, y, v, lock) in enumerate(walk)]
    params = TransitionParams(dwell_s=45)
    whole, final = run(pts, params=params)
    pieces, state = [], {}
    bounds = sorted({c for c in cuts if c < len(pts)} | {0, len(pts)})
    for a, b in itertools.pairwise(bounds):
        events, new = run(pts[a:b], state, params)
        pieces += events
        state = {k: DeviceState.from_bytes(v.to_bytes()) for k, v in {**state, **new}.items()}
    assert pieces == whole
    assert state == final


def test_zone_kinds_cover_the_issue() -> None:
    assert {k.value for k in ZoneKind} == {"service_area", "no_parking", "slow", "no_ride"}


def test_batch_from_decoded_telemetry() -> None:
    from datetime import UTC, datetime

    from kernel.records import Source, Telemetry

    at = datetime(2026, 11, 23, 12, tzinfo=UTC)
    records = [
        Telemetry("a", at, Source.JSON, lat=52.5, lon=13.4, speed_kmh=12.0, locked=False),
        Telemetry("b", at, Source.JSON, battery_pct=50.0),  # no position: skipped
        Telemetry("c", at, Source.NMEA, lat=52.6, lon=13.5),
    ]
    b = PositionBatch.from_telemetry(records)
    assert b.device_ids == ("a", "c") and b.device.tolist() == [0, 1]
    assert b.time.tolist() == [at.timestamp()] * 2
    assert b.locked.tolist() == [0, -1] and b.speed_kmh[0] == 12.0 and np.isnan(b.speed_kmh[1])
    assert len(PositionBatch.from_telemetry([])) == 0
