"""JSON telemetry v1: single records, batches, and the rules of protocol v1."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from invariants import check_decoded

from gateway.decoders import Decoded, decode
from kernel.records import DecodeError, RawMessage, Source

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TOPIC = "fleet/bike-0042/telemetry"

FULL = {
    "v": 1,
    "id": "bike-0042",
    "ts": "2025-06-01T11:59:58.250Z",
    "lat": 52.520008,
    "lon": 13.404954,
    "alt_m": 34.5,
    "speed_kmh": 18.4,
    "heading_deg": 271.5,
    "acc_m": 4.2,
    "fix": 3,
    "sats": 11,
    "hdop": 0.9,
    "battery_pct": 76,
    "odometer_m": 123456.7,
    "locked": False,
    "faults": ["E12", "brake_sensor"],
}


def run(payload: Any, topic: str = TOPIC, now: datetime = NOW) -> Decoded:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return check_decoded(decode(RawMessage(topic, raw, now), now=now), now)


def reason_of(payload: Any, topic: str = TOPIC) -> str:
    with pytest.raises(DecodeError) as info:
        run(payload, topic)
    return info.value.reason


def test_full_single_record_maps_every_field() -> None:
    (rec,) = run(FULL).records
    assert rec.device_id == "bike-0042" and rec.source is Source.JSON
    assert rec.time == datetime(2025, 6, 1, 11, 59, 58, 250000, tzinfo=UTC)
    assert (rec.lat, rec.lon, rec.altitude_m) == (52.520008, 13.404954, 34.5)
    assert (rec.speed_kmh, rec.heading_deg, rec.accuracy_m) == (18.4, 271.5, 4.2)
    assert (rec.fix, rec.satellites, rec.hdop) == (3, 11, 0.9)
    assert (rec.battery_pct, rec.odometer_m, rec.locked) == (76.0, 123456.7, False)
    assert rec.faults == ("E12", "brake_sensor")


def test_minimal_record_is_a_state_snapshot_without_position() -> None:
    (rec,) = run({"v": 1, "ts": 1748779200, "battery_pct": 40, "locked": True}).records
    assert rec.time == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert not rec.has_position and rec.locked is True and rec.battery_pct == 40


def test_fractional_epoch_seconds_and_offsets() -> None:
    (a,) = run({"v": 1, "ts": 1748779199.5}).records
    (b,) = run({"v": 1, "ts": "2025-06-01T13:59:59.5+02:00"}).records
    assert a.time == b.time == datetime(2025, 6, 1, 11, 59, 59, 500000, tzinfo=UTC)
    assert b.time.utcoffset() == timedelta(0)


def test_no_fix_keeps_state_but_drops_position() -> None:
    (rec,) = run({**FULL, "fix": 0}).records
    assert rec.lat is None and rec.lon is None and rec.fix == 0
    assert rec.battery_pct == 76 and rec.faults == ("E12", "brake_sensor")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    (rec,) = run({**FULL, "v2_thing": {"nested": [1, 2]}, "temperature_c": 21.5}).records
    assert rec.lat == FULL["lat"]


def test_known_field_with_wrong_type_is_refused() -> None:
    assert reason_of({**FULL, "sats": "11"}) == "bad_schema"
    assert reason_of({**FULL, "locked": "no"}) == "bad_schema"
    assert reason_of({**FULL, "faults": "E12"}) == "bad_schema"
    assert reason_of({**FULL, "lat": True}) == "bad_schema"


def test_future_tolerance_is_300_seconds() -> None:
    run({"v": 1, "ts": (NOW + timedelta(seconds=300)).timestamp()})
    assert reason_of({"v": 1, "ts": (NOW + timedelta(seconds=301)).timestamp()}) == "future_time"
    sixty_ahead = RawMessage(TOPIC, b'{"v":1,"ts":1748779260}', NOW)
    assert len(decode(sixty_ahead, now=NOW).records) == 1
    with pytest.raises(DecodeError, match="future_time"):
        decode(sixty_ahead, now=NOW, future_tolerance_s=30.0)


def test_id_may_be_omitted_or_must_match_the_topic() -> None:
    payload = {k: v for k, v in FULL.items() if k != "id"}
    assert run(payload).records[0].device_id == "bike-0042"
    assert reason_of({**FULL, "id": "bike-0043"}) == "id_mismatch"


def test_batch_of_records_in_order() -> None:
    records = [{"ts": 1748779000 + i, "lat": 52.5 + i / 1000, "lon": 13.4} for i in range(5)]
    decoded = run({"v": 1, "records": records})
    assert [r.lat for r in decoded.records] == [52.5 + i / 1000 for i in range(5)]
    assert decoded.rejects == ()


def test_bad_record_in_a_batch_is_rejected_alone_with_its_own_bytes() -> None:
    payload = (
        b'{"v":1,"records":[{"ts":1748779000,"lat":52.5,"lon":13.4},'
        b'{"ts":1748779001,"lat":"x","lon":13.4},'
        b'{"ts":1748779002,"lat":95.0,"lon":13.4},'
        b'{"ts":1748779003,"lat":52.6,"lon":13.4}]}'
    )
    decoded = run(payload)
    assert [r.lat for r in decoded.records] == [52.5, 52.6]
    assert [(r.reason, r.raw) for r in decoded.rejects] == [
        ("bad_schema", b'{"ts":1748779001,"lat":"x","lon":13.4}'),
        ("out_of_range", b'{"ts":1748779002,"lat":95.0,"lon":13.4}'),
    ]


def test_id_mismatch_anywhere_in_a_batch_refuses_the_batch() -> None:
    records = [{"ts": 1748779000, "lat": 1.0, "lon": 1.0}, {"id": "other", "ts": 1748779001}]
    assert reason_of({"v": 1, "records": records}) == "id_mismatch"
    assert reason_of({"v": 1, "id": "other", "records": records[:1]}) == "id_mismatch"


def test_batch_limits() -> None:
    assert reason_of({"v": 1, "records": []}) == "empty"
    assert reason_of(b'{"v":1,"records":[' + b",".join([b"{}"] * 1001) + b"]}") == "too_many_records"
    assert reason_of({"records": [{"ts": 1748779000}]}) == "bad_version"
    assert reason_of({"v": 2, "records": [{"ts": 1748779000}]}) == "bad_version"
    full = b'{"v":1,"records":[' + b",".join([b'{"ts":1e9}'] * 1000) + b"]}"  # 2001-09-09
    assert len(full) <= 16384 and len(run(full).records) == 1000


def test_record_version_inside_a_batch_is_optional_but_checked() -> None:
    decoded = run({"v": 1, "records": [{"v": 1, "ts": 1748779000}, {"v": 7, "ts": 1748779001}]})
    assert len(decoded.records) == 1 and decoded.rejects[0].reason == "bad_version"
