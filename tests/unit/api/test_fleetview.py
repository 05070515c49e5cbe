"""The live-fleet snapshot (pure): filters against a plain reading of the states, paging that hands
out every vehicle exactly once, cursors that refuse what they did not make, and reuse of entries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import fleetview
from api.fleetview import VehicleFilter, VehicleState

IDS = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8)
STATE = st.fixed_dictionaries(
    {"lon": st.floats(13.0, 14.0), "lat": st.floats(52.0, 53.0), "ts": st.floats(1.7e9, 1.8e9)},
    optional={"battery_pct": st.floats(0, 100), "locked": st.booleans(), "speed_kmh": st.floats(0, 40)},
)
FLEET = st.dictionaries(IDS, st.tuples(STATE, st.booleans(), st.booleans()), max_size=40)


def _snapshot(fleet: dict[str, tuple[dict[str, object], bool, bool]]) -> fleetview.Snapshot:
    states = {k.encode(): orjson.dumps({"id": k, **s}) for k, (s, _, _) in fleet.items()}
    online = {k.encode(): b"1" if on else b"0" for k, (_, on, _) in fleet.items()}
    maintenance = frozenset(k for k, (_, _, m) in fleet.items() if m)
    return fleetview.build(states, online, maintenance, None, 0.0)


def _expected(fleet: dict[str, tuple[dict[str, object], bool, bool]], f: VehicleFilter) -> list[str]:
    out = []
    for device_id, (state, on, maintenance) in sorted(fleet.items()):
        lon, lat = round(state["lon"], 7), round(state["lat"], 7)  # type: ignore[arg-type]
        if f.bbox and not (f.bbox[0] <= lon <= f.bbox[2] and f.bbox[1] <= lat <= f.bbox[3]):
            continue
        kind = fleetview.vehicle_state({**state, "online": on}, maintenance)
        if f.states and kind not in f.states:
            continue
        battery = state.get("battery_pct")
        if f.battery_below is not None and (battery is None or not battery < f.battery_below):  # type: ignore[operator]
            continue
        if f.online is not None and on != f.online:
            continue
        out.append(device_id)
    return out


FILTERS = st.builds(
    VehicleFilter,
    bbox=st.none()
    | st.tuples(st.floats(13.0, 13.5), st.floats(52.0, 52.5), st.floats(13.5, 14.0), st.floats(52.5, 53.0)),
    states=st.frozensets(st.sampled_from(list(VehicleState)), max_size=3),
    battery_below=st.none() | st.floats(0, 100),
    online=st.none() | st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(FLEET, FILTERS, st.integers(1, 7))
def test_pages_hand_out_exactly_the_filtered_vehicles_once_in_id_order(fleet, f, limit) -> None:  # type: ignore[no-untyped-def]
    snapshot = _snapshot(fleet)
    keep = fleetview.mask(snapshot, f)
    seen: list[str] = []
    after = None
    for _ in range(100):
        indexes, cursor = fleetview.page(snapshot, keep, after, limit)
        assert len(indexes) <= limit
        body = orjson.loads(fleetview.collection(snapshot, indexes, cursor))
        assert body["type"] == "FeatureCollection" and body["count"] == len(indexes)
        seen += [feature["id"] for feature in body["features"]]
        if cursor is None:
            break
        after = fleetview.decode_cursor(cursor)
    assert seen == _expected(fleet, f)


def test_a_state_is_the_first_that_holds() -> None:
    state = fleetview.vehicle_state
    assert state({"online": True, "battery_pct": 5}, True) is VehicleState.MAINTENANCE
    assert state({"online": False, "battery_pct": 5}, False) is VehicleState.OFFLINE
    assert state({"online": True, "battery_pct": 5, "locked": False}, False) is VehicleState.LOW_BATTERY
    assert state({"locked": False, "speed_kmh": 12}, False) is VehicleState.RIDING
    assert state({"locked": False, "speed_kmh": 0.5}, False) is VehicleState.PARKED
    assert state({"locked": True, "speed_kmh": 12}, False) is VehicleState.LOCKED
    assert state({}, False) is VehicleState.LOCKED  # nothing known: shown as standing, locked


def test_unchanged_vehicles_keep_their_built_entry() -> None:
    states = {
        b"a": orjson.dumps({"id": "a", "lon": 13.4, "lat": 52.5}),
        b"b": orjson.dumps({"id": "b", "lon": 13.5, "lat": 52.6}),
    }
    first = fleetview.build(states, {}, frozenset(), None, 1.0)
    moved = {**states, b"b": orjson.dumps({"id": "b", "lon": 13.6, "lat": 52.6})}
    second = fleetview.build(moved, {}, frozenset(), first, 2.0)
    assert second.entries["a"] is first.entries["a"]
    assert second.entries["b"] is not first.entries["b"] and second.lon[1] == pytest.approx(13.6)
    third = fleetview.build(moved, {}, frozenset({"a"}), second, 3.0)  # into maintenance: rebuilt
    assert orjson.loads(third.features[0])["properties"]["state"] == "maintenance"


def test_states_without_a_position_or_unreadable_are_left_out() -> None:
    states = {b"a": b"{not json", b"b": orjson.dumps({"id": "b", "battery_pct": 50}), b"c": b"[1]",
              b"d": orjson.dumps({"id": "d", "lon": 1.0, "lat": 2.0})}  # fmt: skip
    assert list(fleetview.build(states, {}, frozenset(), None, 0.0).ids) == ["d"]


@given(st.text(max_size=80))
def test_cursors_round_trip_and_anything_else_is_refused(text: str) -> None:
    assert fleetview.decode_cursor(fleetview.encode_cursor(text)) == text
    try:
        decoded = fleetview.decode_cursor(text)
    except fleetview.BadCursor:
        return
    assert isinstance(decoded, str)  # never anything but the id of a page's last vehicle, or refused


def test_the_core_imports_no_io() -> None:
    code = (
        "import sys, api.fleetview, api.mobility;"
        " print(sorted(m for m in ('psycopg', 'redis', 'asyncio', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@settings(max_examples=100, deadline=None)
@given(FLEET, FLEET)
def test_a_snapshot_built_on_the_previous_one_equals_one_built_afresh(before, after) -> None:  # type: ignore[no-untyped-def]
    """Whether rows are patched in place or everything is rebuilt, the snapshot is the same."""
    shared = {k: after.get(k, v) for k, v in before.items()}  # the same ids, some states changed
    for fleet_after in (after, shared):
        incremental = fleetview.build(*_raw(fleet_after), _snapshot(before), 1.0)
        fresh = fleetview.build(*_raw(fleet_after), None, 1.0)
        assert list(incremental.ids) == list(fresh.ids) and list(incremental.features) == list(fresh.features)
        for column in ("lon", "lat", "battery", "online", "state"):
            assert np.array_equal(getattr(incremental, column), getattr(fresh, column), equal_nan=column == "battery")


def _raw(fleet: dict[str, tuple[dict[str, object], bool, bool]]):  # type: ignore[no-untyped-def]
    states = {k.encode(): orjson.dumps({"id": k, **s}) for k, (s, _, _) in fleet.items()}
    online = {k.encode(): b"1" if on else b"0" for k, (_, on, _) in fleet.items()}
    return states, online, frozenset(k for k, (_, _, m) in fleet.items() if m)


@settings(max_examples=100, deadline=None)
@given(FLEET, st.data())
def test_published_changes_applied_equal_a_build_from_the_whole_hash(before, data) -> None:  # type: ignore[no-untyped-def]
    """What the API gets from `fleet:live` between two full reads, applied to the last snapshot,
    gives the snapshot a full read would (or None, when only a full read can tell)."""
    after = {k: data.draw(st.tuples(STATE, st.booleans(), st.booleans())) if data.draw(st.booleans()) else v
             for k, v in before.items()}  # fmt: skip
    previous = _snapshot(before)
    states, online, maintenance = _raw(after)
    changed = {k: states[k.encode()] for k in after if after[k][0] != before[k][0]}
    applied = fleetview.apply(previous, changed, online, maintenance, 1.0)
    fresh = fleetview.build(states, online, maintenance, None, 1.0)
    assert applied is not None
    assert list(applied.ids) == list(fresh.ids) and list(applied.features) == list(fresh.features)
    assert np.array_equal(applied.state, fresh.state) and np.array_equal(applied.lon, fresh.lon)
    assert fleetview.apply(previous, {"new-one": b'{"id":"new-one","lon":1,"lat":2}'}, online, maintenance, 2.0) is None
