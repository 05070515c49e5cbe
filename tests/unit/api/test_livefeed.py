"""The `/v1/live` fan-out's core: each client gets what is in its box, coalesced to the newest state
per vehicle, one last update for a vehicle that left, and a bounded, counted queue of events."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.livefeed import WORLD, Box, ClientFeed, TickBuilder, choose, parse_box, snapshot_tick, vehicle_message

IDS = [f"bike-{i}" for i in range(6)]
lons = st.floats(-10.0, 10.0, allow_nan=False)
lats = st.floats(-10.0, 10.0, allow_nan=False)
boxes = st.builds(
    lambda w, s, dw, ds: Box(w, s, min(w + dw, 180.0), min(s + ds, 90.0)),
    st.floats(-12.0, 12.0), st.floats(-12.0, 12.0), st.floats(0.0, 15.0), st.floats(0.0, 15.0),
)  # fmt: skip
report = st.tuples(st.sampled_from(IDS), lons, lats)
ticks = st.lists(report, max_size=12)
# a step is a tick of reports, a take, or a new box
steps = st.lists(st.one_of(ticks.map(lambda t: ("tick", t)), st.just(("take", None)), boxes.map(lambda b: ("box", b))),
                 max_size=25)  # fmt: skip


def vehicles_in(message: bytes | None) -> dict[str, dict[str, object]]:
    if message is None:
        return {}
    body = orjson.loads(message)
    ids = [v["id"] for v in body["vehicles"]]
    assert len(ids) == len(set(ids)), "one entry per vehicle: coalesced"
    return {v["id"]: v for v in body["vehicles"]}


@given(boxes, steps)
def test_each_client_gets_the_newest_state_of_what_is_or_was_in_its_box(box: Box, plan: list) -> None:
    """Against a plain model that walks every report in order (one builder, as the hub has)."""
    feed = ClientFeed(box)
    builder = TickBuilder()
    last: dict[str, tuple[float, float]] = {}  # where each vehicle was at the tick before
    pending: dict[str, tuple[float, float, int]] = {}
    current = box
    for stamp, (kind, arg) in enumerate(plan):
        if kind == "box":
            feed.set_box(arg)
            current = arg
        elif kind == "tick":
            builder.add_states(orjson.dumps([{"id": d, "lon": x, "lat": y, "ts": stamp * 100 + i}
                                             for i, (d, x, y) in enumerate(arg)]))  # fmt: skip
            feed.offer(builder.take())
            latest = {d: (x, y, stamp * 100 + i) for i, (d, x, y) in enumerate(arg)}  # newest in a tick wins
            for device, (x, y, ts) in latest.items():
                before = last.get(device)
                if current.contains(x, y) or (before is not None and current.contains(*before)):
                    pending[device] = (x, y, ts)  # in the box, or once as it leaves
                last[device] = (x, y)
        else:
            got = vehicles_in(feed.take())
            assert {d: (v["lon"], v["lat"], v["ts"]) for d, v in got.items()} == {
                d: (x, y, ts) for d, (x, y, ts) in pending.items()
            }
            pending = {}
    assert len(feed) <= len(IDS)  # bounded by the fleet, however long nobody takes


@given(boxes, st.lists(st.tuples(lons, lats), max_size=60), st.integers(1, 10))
def test_events_are_kept_in_order_bounded_and_overflow_is_counted(box: Box, points: list, bound: int) -> None:
    feed = ClientFeed(box, max_events=bound)
    builder = TickBuilder()
    for n, (x, y) in enumerate(points):
        builder.add_event(orjson.dumps({"device_id": f"d{n}", "kind": "violation", "lon": x, "lat": y}))
    feed.offer(builder.take())
    inside = [f"d{n}" for n, (x, y) in enumerate(points) if box.contains(x, y)]
    body = orjson.loads(feed.take() or b'{"events": [], "dropped": 0}')
    assert [e["device_id"] for e in body["events"]] == inside[-bound:]
    assert body["dropped"] == max(0, len(inside) - bound)
    assert feed.take() is None


def test_command_transitions_reach_every_client_whatever_its_box() -> None:
    builder = TickBuilder()
    builder.add_commands(orjson.dumps([{"id": "c1", "device_id": "far-away", "to": "confirmed"}]))
    feed = ClientFeed(Box(0.0, 0.0, 0.001, 0.001))
    feed.offer(builder.take())
    body = orjson.loads(feed.take() or b"{}")
    assert body["events"] == [{"id": "c1", "device_id": "far-away", "to": "confirmed", "type": "command"}]


@given(st.floats(-180, 180), st.floats(-90, 90), st.floats(-180, 180), st.floats(-90, 90),
       st.lists(st.tuples(st.floats(-180, 180), st.floats(-90, 90)), max_size=30))  # fmt: skip
def test_the_vectorised_test_agrees_with_the_plain_one(w: float, s: float, e: float, n: float, pts: list) -> None:
    """Also across the antimeridian (west > east)."""
    import numpy as np

    box = Box(w, min(s, n), e, max(s, n))
    lon = np.array([p[0] for p in pts], dtype=float)
    lat = np.array([p[1] for p in pts], dtype=float)
    assert box.mask(lon, lat).tolist() == [box.contains(x, y) for x, y in pts]
    builder = TickBuilder()
    builder.add_states(orjson.dumps([{"id": f"v{i}", "lon": x, "lat": y} for i, (x, y) in enumerate(pts)]))
    tick = builder.take()
    in_order = [i for i, (x, y) in enumerate(pts) if box.contains(x, y)]
    assert [c.tolist() for c in choose([box, WORLD], tick)] == [in_order, list(range(len(pts)))]


@pytest.mark.parametrize(
    "value",
    [None, [], [1, 2, 3], [0, 0, 0, "x"], [0, 0, 0, float("nan")], [0, 10, 1, 5], [-181, 0, 0, 1], [True, 0, 1, 1],
     {"w": 0}],
)  # fmt: skip
def test_bad_boxes_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_box(value)


def test_a_box_reads_back() -> None:
    assert parse_box([11.5, 48.1, 11.6, 48.2]) == Box(11.5, 48.1, 11.6, 48.2)
    assert WORLD.contains(179.9, -89.9)


def test_the_builder_skips_what_is_not_a_positioned_state_and_counts_garbage() -> None:
    builder = TickBuilder()
    builder.add_states(b"not json")
    builder.add_states(b'{"an": "object"}')
    builder.add_states(orjson.dumps([{"id": "a", "battery_pct": 50}, 7, {"id": "b", "lon": 1.0, "lat": 2.0}]))
    builder.add_event(b'{"device_id": "x"}')
    builder.add_commands(b"{}")
    tick = builder.take()
    assert tick.ids.tolist() == ["b"]
    assert builder.malformed == 4
    assert len(builder.take()) == 0


def test_vehicle_message_keeps_what_a_marker_needs() -> None:
    state = {"id": "a", "lon": 11.123456789, "lat": 48.1, "ts": 5.0, "battery_pct": 40, "faults": {}, "hdop": 1.2}
    assert orjson.loads(vehicle_message(state) or b"") == {
        "id": "a", "lon": 11.123456789, "lat": 48.1, "ts": 5.0, "speed_kmh": None, "heading_deg": None,
        "battery_pct": 40, "locked": None, "faults": [],
    }  # fmt: skip
    assert vehicle_message({"id": "a"}) is None


def test_a_snapshot_is_every_positioned_vehicle() -> None:
    tick = snapshot_tick([{"id": "a", "lon": 1.0, "lat": 1.0}, {"id": "b"}])
    assert tick.ids.tolist() == ["a"]
