"""The JSON decoder's two paths must agree: the fast path (constraints checked by msgspec) accepts a
message only when the exact path (the rules one by one) accepts it too, with the same records.

Values are drawn around every limit of protocol v1, so that both sides of each boundary, ints where
floats are expected, time zones, fractional seconds and the (0, 0) placeholder all occur."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.decoders import json_v1
from gateway.decoders.json_v1 import _decode_fast, decode_json, decode_json_exact
from kernel.records import DecodeError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TOLERANCE_S = 300.0
DEVICE = "bike-7"
MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _inside(low: float, high: float) -> st.SearchStrategy[float | int]:
    return st.floats(min_value=low, max_value=high) | st.integers(min_value=int(low), max_value=int(high))


def _edges(*limits: float) -> st.SearchStrategy[float | int]:
    """At, just inside and just outside each limit, as floats and as ints."""
    near = [x + d for x in limits for d in (0.0, 1e-9, -1e-9, 1.0, -1.0)]
    return st.sampled_from(near) | st.sampled_from([int(x) for x in near])


LATEST = NOW + timedelta(seconds=TOLERANCE_S)
RECENT = st.datetimes(min_value=datetime(2025, 5, 1), max_value=datetime(2025, 6, 1, 12), timezones=st.just(UTC))
OFFSETS = st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30)])
DIGITS = st.sampled_from([0, 3, 6, 7])


def _iso(t: datetime, offset: timedelta, digits: int) -> str:
    local = t.astimezone(timezone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}{'7' if digits > 6 else ''}"[:digits]
    z = local.strftime("%z")
    return text + ("Z" if not offset else f"{z[:3]}:{z[3:]}")


def _times(instants: st.SearchStrategy[datetime]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(_iso, instants, OFFSETS, DIGITS),
        instants.map(lambda t: t.timestamp()),
        instants.map(lambda t: int(t.timestamp())),
    )


TIME_EDGES = [LATEST, LATEST + timedelta(microseconds=1), datetime(2000, 1, 1, tzinfo=UTC),
              datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]  # fmt: skip
ODD_TIMES = ["2025-06-01T11:59:00", "2025-06-01t11:59:00z", "2025-06-01 11:59:00Z", "noon", 1e300, -1e300, None, True]

# Values every rule accepts ...
VALID: dict[str, st.SearchStrategy[Any]] = {
    "ts": _times(RECENT),
    "lat": _inside(-90, 90),
    "lon": _inside(-180, 180),
    "alt_m": _inside(-1000, 100_000),
    "speed_kmh": _inside(0, 399),
    "heading_deg": _inside(0, 359),
    "acc_m": _inside(0, 1e7),
    "fix": st.sampled_from([0, 2, 3]),
    "sats": st.integers(0, 255),
    "hdop": _inside(0, 1000),
    "battery_pct": _inside(0, 100),
    "odometer_m": _inside(0, 1e10),
    "locked": st.booleans(),
    "faults": st.lists(st.sampled_from(["E1", "brake", "x" * 64]), max_size=3),
    "id": st.just(DEVICE),
}
# ... and values on either side of a rule, one of which may replace a valid value.
EDGE: dict[str, st.SearchStrategy[Any]] = {
    "ts": _times(st.sampled_from(TIME_EDGES)) | st.sampled_from(ODD_TIMES),
    "lat": _edges(-90, 0, 90),
    "lon": _edges(-180, 0, 180),
    "alt_m": _edges(-1000, 100_000),
    "speed_kmh": _edges(0, 400),
    "heading_deg": _edges(0, 360),
    "acc_m": _edges(0, 1e7),
    "fix": st.sampled_from([1, 4, -1, 3.0, None]),
    "sats": st.sampled_from([256, -1, 9.5, None]),
    "hdop": _edges(0, 1000),
    "battery_pct": _edges(0, 100),
    "odometer_m": _edges(0, 1e10),
    "locked": st.sampled_from([None, 0, "yes"]),
    "faults": st.lists(st.sampled_from(["E1", "", "x" * 65]), min_size=1, max_size=34) | st.just(None),
    "id": st.sampled_from(["bike-8", None, ""]),
    "v": st.sampled_from([2, 0, None, "1"]),
}


@st.composite
def _record(draw: st.DrawFn, **fixed: Any) -> dict[str, Any]:
    """A valid record with a random subset of fields, sometimes with (0, 0) as position, and in most
    draws one field moved to an edge of its rule."""
    record = {"ts": draw(VALID["ts"]), **draw(st.fixed_dictionaries({}, optional=VALID)), **fixed}
    if draw(st.booleans()):
        record["lat"], record["lon"] = draw(VALID["lat"]), draw(VALID["lon"])
    if draw(st.integers(0, 9)) == 0:
        record["lat"], record["lon"] = draw(st.sampled_from([0, 0.0])), draw(st.sampled_from([0, 0.0]))
    if draw(st.integers(0, 2)) > 0:
        name = draw(st.sampled_from(sorted(EDGE)))
        record[name] = draw(EDGE[name])
    return record


def _exact(payload: bytes) -> tuple[Any, ...] | str:
    try:
        decoded = decode_json_exact(payload, DEVICE, now=NOW, tolerance_s=TOLERANCE_S)
    except DecodeError as exc:
        return exc.reason
    return decoded.records, tuple(r.reason for r in decoded.rejects)


def _assert_paths_agree(payload: bytes) -> None:
    fast = _decode_fast(payload, DEVICE, LATEST)
    exact = _exact(payload)
    if fast is not None:
        assert exact == (fast.records, ()), f"fast path accepted what the exact path did not: {payload!r}"


@MANY
@given(_record(v=1))
def test_single_records_fast_path_agrees_with_the_rules(record: dict[str, Any]) -> None:
    _assert_paths_agree(json.dumps(record).encode())


@MANY
@given(st.lists(_record(), min_size=0, max_size=4), st.sampled_from([{"v": 1}, {"v": 1, "id": DEVICE}, {}]))
def test_batches_fast_path_agrees_with_the_rules(records: list[dict[str, Any]], envelope: dict[str, Any]) -> None:
    _assert_paths_agree(json.dumps({**envelope, "records": records}).encode())


GOOD = {"ts": "2025-06-01T11:59:58.250Z", "lat": 52.52, "lon": 13.4, "alt_m": 34, "speed_kmh": 18.4,
        "heading_deg": 359.9, "acc_m": 4, "fix": 3, "sats": 11, "hdop": 0.9, "battery_pct": 100,
        "odometer_m": 0, "locked": True, "faults": ["E12"]}  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 1, **GOOD},
        {"v": 1, "id": DEVICE, **GOOD, "ts": 1748779198.25},
        {"v": 1, **GOOD, "fix": 0},
        {"v": 1, "ts": "2025-06-01T13:59:58+02:00", "battery_pct": 50},
        {"v": 1, "records": [GOOD, {**GOOD, "ts": 1748779100}]},
    ],
)
def test_good_messages_take_the_fast_path(payload: dict[str, Any]) -> None:
    """If the fast path refused good traffic, the gateway would silently run at the exact path's speed."""
    raw = json.dumps(payload).encode()
    fast = _decode_fast(raw, DEVICE, LATEST)
    assert fast is not None
    assert fast == decode_json(raw, DEVICE, now=NOW, tolerance_s=TOLERANCE_S)
    assert _exact(raw) == (fast.records, ())


def test_exact_path_reads_its_limits_from_the_checked_struct() -> None:
    ranges = {name: (low, high, high_open) for name, low, high, high_open in json_v1._RANGES}
    assert ranges["speed_kmh"] == (0.0, 400.0, True)
    assert ranges["heading_deg"] == (0.0, 360.0, True)
    assert ranges["sats"] == (0, 255, False)
    assert set(ranges) == {"alt_m", "speed_kmh", "heading_deg", "acc_m", "sats", "hdop", "battery_pct",
                           "odometer_m"}  # fmt: skip


@pytest.mark.parametrize(
    "ts", [t for edge in TIME_EDGES for t in (_iso(edge, timedelta(hours=2), 6), edge.timestamp())]
)
def test_time_limits_are_the_same_on_both_paths(ts: str | float) -> None:
    raw = json.dumps({"v": 1, "ts": ts, "lat": 52.5, "lon": 13.4}).encode()
    inside = datetime(2000, 1, 1, tzinfo=UTC) <= datetime.fromtimestamp(_seconds(ts), UTC) <= LATEST
    fast = _decode_fast(raw, DEVICE, LATEST)
    assert (fast is not None) == inside
    assert isinstance(_exact(raw), tuple) == inside


def _seconds(ts: str | float) -> float:
    return ts if isinstance(ts, float) else datetime.fromisoformat(ts).timestamp()
