"""The gateway's batch policy: every message ends in exactly one place, nothing raises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import decoders
from gateway.intake import Intake, classify
from gateway.records import RawMessage
from gateway.wire import FORMAT, RECORD_BYTES, StreamEntry, decode_entry, encode_entry

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
INTAKE = Intake(decode=decoders.decode, max_payload=16384, future_tolerance_s=300, known=frozenset({"bike-1"}))


def msg(topic: str, payload: bytes) -> RawMessage:
    return RawMessage(topic, payload, NOW)


def report(**fields: object) -> bytes:
    return orjson.dumps({"v": 1, "ts": (NOW - timedelta(seconds=5)).isoformat(), "lat": 52.5, "lon": 13.4, **fields})


def test_good_report_becomes_a_record_with_its_receive_time() -> None:
    out = classify([msg("fleet/bike-1/telemetry", report(speed_kmh=12.5))], INTAKE, now=NOW)
    assert len(out.entry.records) == 1
    assert out.entry.received_at == [NOW]
    assert out.entry.records[0].speed_kmh == 12.5
    assert out.entry.dead == []


def test_unknown_device_and_bad_topic_are_dead_letters_with_raw_bytes() -> None:
    out = classify(
        [msg("fleet/stranger/telemetry", report()), msg("elsewhere/x", b"hi"), msg("fleet/bike-1/telemetry", b"{")],
        INTAKE,
        now=NOW,
    )
    assert [(d.reason, d.payload) for d in out.entry.dead] == [
        ("unknown_device", report()),
        ("bad_topic", b"hi"),
        ("bad_json", b"{"),
    ]
    assert out.entry.records == []


def test_status_and_acks_are_not_telemetry() -> None:
    ack = orjson.dumps({"id": "5f0c1a2e-8d7b-4c1e-9a3f-2b6d8e9f0a1b", "status": "ok"})
    out = classify([msg("fleet/bike-1/status", b"offline"), msg("fleet/bike-1/cmd/ack", ack)], INTAKE, now=NOW)
    assert out.status == {"bike-1": False}
    assert orjson.loads(out.acks[0])["device_id"] == "bike-1"
    assert out.entry.records == []
    assert out.entry.dead == []


def test_stream_entry_round_trips() -> None:
    out = classify([msg("fleet/bike-1/telemetry", report(faults=["E1"])), msg("x", b"\xff")], INTAKE, now=NOW)
    again = decode_entry(encode_entry(out.entry))
    assert again == StreamEntry(FORMAT, out.entry.records, out.entry.received_at, out.entry.dead)
    assert len(encode_entry(out.entry)) < 200  # records are arrays, not maps of field names


def test_record_bytes_estimate_matches_the_format() -> None:
    """Ingest sizes its transactions from entry lengths with RECORD_BYTES: it must stay near the truth."""
    full = report(
        alt_m=34.0,
        speed_kmh=15.0,
        heading_deg=90.0,
        acc_m=4.0,
        fix=3,
        sats=9,
        hdop=0.9,
        battery_pct=80.0,
        odometer_m=1234.5,
        locked=False,
    )
    out = classify([msg("fleet/bike-1/telemetry", full)] * 100, INTAKE, now=NOW)
    per_record = len(encode_entry(out.entry)) / len(out.entry.records)
    assert 0.75 * RECORD_BYTES < per_record < 1.25 * RECORD_BYTES, per_record


def test_an_entry_of_another_format_is_refused_not_misread() -> None:
    """Format 1 held records as maps; read as format 2 it must fail (ingest dead-letters it whole)."""
    out = classify([msg("fleet/bike-1/telemetry", report())], INTAKE, now=NOW)
    record = msgspec.structs.asdict(out.entry.records[0])
    old = msgspec.msgpack.encode([[record], out.entry.received_at, []])
    with pytest.raises(msgspec.ValidationError):
        decode_entry(old)
    with pytest.raises(msgspec.ValidationError):
        decode_entry(msgspec.msgpack.encode([3, [], [], []]))


@settings(max_examples=300, deadline=None)
@given(
    topic=st.sampled_from(
        ["fleet/bike-1/telemetry", "fleet/bike-1/nmea", "owntracks/bike-1/phone", "fleet/bike-1/status",
         "fleet/bike-1/cmd/ack", "fleet/+/x", ""]
    ),
    payload=st.binary(max_size=300),
)  # fmt: skip
def test_hostile_bytes_never_raise_and_every_message_is_accounted_for(topic: str, payload: bytes) -> None:
    out = classify([msg(topic, payload)], INTAKE, now=NOW)
    dropped = sum(out.counters.values())  # over the device's dead-letter budget: counted, not stored
    accounted = len(out.entry.records) + len(out.entry.dead) + len(out.status) + len(out.acks) + len(out.ignored)
    assert accounted + dropped >= 1
