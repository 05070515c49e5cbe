from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from api.geojson import feature_collection
from kernel.livestate import _FIELDS, latest_patches
from kernel.records import Source, Telemetry

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_patch_merges_fields_in_device_time_order_regardless_of_arrival() -> None:
    newer = Telemetry("b", T0 + timedelta(seconds=10), Source.JSON, battery_pct=50.0)
    older = Telemetry("b", T0, Source.JSON, lat=1.0, lon=2.0, battery_pct=60.0)
    patches = latest_patches([newer, older], [T0, T0])
    assert patches["b"]["battery_pct"] == 50.0  # the newer report wins
    assert (patches["b"]["lat"], patches["b"]["lon"]) == (1.0, 2.0)  # the position is kept
    assert patches["b"]["ts"] == (T0 + timedelta(seconds=10)).timestamp()


def test_geojson_is_lon_lat_and_skips_vehicles_without_position() -> None:
    states = [
        {"id": "a", "ts": T0.timestamp(), "lat": 52.5, "lon": 13.4, "faults": {}},
        {"id": "b", "ts": T0.timestamp(), "battery_pct": 10},
    ]
    fc = feature_collection(states)
    assert [f["id"] for f in fc["features"]] == ["a"]
    feature = fc["features"][0]
    assert feature["geometry"] == {"type": "Point", "coordinates": [13.4, 52.5]}
    assert feature["properties"]["faults"] == []
    assert feature["properties"]["device_time"] == "2026-11-23T12:00:00Z"


def test_patch_takes_each_field_from_the_newest_report_that_has_it() -> None:
    reports = [
        Telemetry("b", T0 + timedelta(seconds=s), Source.JSON, battery_pct=float(100 - s)) for s in range(5)
    ] + [
        Telemetry("b", T0 - timedelta(seconds=1), Source.NMEA, lat=1.0, lon=2.0, faults=("E1",)),
        Telemetry("c", T0, Source.JSON, locked=True),
    ]  # fmt: skip
    patches = latest_patches(list(reversed(reports)), [T0] * len(reports))
    assert patches["b"]["battery_pct"] == 96.0
    assert (patches["b"]["lat"], patches["b"]["lon"], patches["b"]["faults"]) == (1.0, 2.0, ["E1"])
    assert patches["b"]["source"] == "json"
    assert patches["c"] == {"id": "c", "ts": T0.timestamp(), "seen": T0.timestamp(), "source": "json",
                            "locked": True, "faults": []}  # fmt: skip


def _reference(records: list[Telemetry], received: list[datetime]) -> dict[str, dict[str, object]]:
    """The rule spelled out: each field from the device's newest report that has it, newest by
    device time and, among equal times, the first to arrive."""
    order = sorted(range(len(records)), key=lambda i: (-records[i].time.timestamp(), i))
    patches: dict[str, dict[str, object]] = {}
    for i in order:
        r = records[i]
        first = {"id": r.device_id, "ts": r.time.timestamp(), "seen": received[i].timestamp(), "source": str(r.source)}
        patch = patches.setdefault(r.device_id, first)
        for name in _FIELDS:
            if name not in patch and getattr(r, name) is not None:
                patch[name] = getattr(r, name)
        if "faults" not in patch and r.faults:
            patch["faults"] = list(r.faults)
    for patch in patches.values():
        patch.setdefault("faults", [])
    return patches


_report = st.builds(
    Telemetry,
    device_id=st.sampled_from(["a", "b", "c"]),
    time=st.integers(0, 6).map(lambda s: T0 + timedelta(seconds=s)),  # few times: ties and disorder
    source=st.sampled_from(list(Source)),
    battery_pct=st.none() | st.floats(0, 100),
    locked=st.none() | st.booleans(),
    lat=st.none() | st.just(1.0),
    lon=st.none() | st.just(2.0),
    faults=st.sampled_from([(), ("E1",), ("E2", "E3")]),
)


@given(st.lists(_report, max_size=30))
def test_patches_follow_the_rule_in_any_arrival_order(reports: list[Telemetry]) -> None:
    received = [T0 + timedelta(milliseconds=k) for k in range(len(reports))]  # tells the tie-breaker apart
    assert latest_patches(reports, received) == _reference(reports, received)
