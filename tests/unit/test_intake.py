"""The gateway's batch policy: every message ends in exactly one place, nothing raises."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import decoders
from gateway.intake import Intake, classify
from kernel.deadletters import MAX_PAYLOAD, DeadLetterBudget
from kernel.records import RawMessage
from kernel.wire import FORMAT, RECORD_BYTES, StreamEntry, decode_entry, encode_entry

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


# -- poison pills and floods --------------------------------------------------------------------------
def fresh(per_minute: int = 100) -> Intake:
    return Intake(
        decode=decoders.decode, max_payload=16384, future_tolerance_s=300, known=frozenset({"bike-1", "bike-2"}),
        budget=DeadLetterBudget(per_minute=per_minute),
    )  # fmt: skip


def test_an_amplifier_message_is_one_dead_letter_with_a_count() -> None:
    flood = b"$\n" * 8192  # 16 KiB: 8,192 lines that are not NMEA
    out = classify([msg("fleet/bike-1/nmea", flood), msg("fleet/bike-2/telemetry", report())], fresh(), now=NOW)
    assert len(out.entry.records) == 1  # the other device's record is untouched
    [dead] = out.entry.dead
    assert (dead.reason, dead.count, dead.size) == ("bad_schema", 8192, len(flood) - 1)  # lines, newline-joined
    assert len(dead.payload) == MAX_PAYLOAD
    assert dead.sha256 == hashlib.sha256(b"\n".join([b"$"] * 8192)).digest()


def test_a_batch_of_bad_records_is_one_dead_letter_per_reason() -> None:
    bad = [{"ts": i, "lat": 95.0, "lon": 1.0} for i in range(1, 300)]  # bad_time comes first
    bad += [{"ts": NOW.timestamp() - i, "faults": ["\x00"]} for i in range(1, 101)]
    out = classify([msg("fleet/bike-1/telemetry", orjson.dumps({"v": 1, "records": bad}))], fresh(), now=NOW)
    assert [(d.reason, d.count) for d in out.entry.dead] == [("bad_time", 299), ("bad_string", 100)]


@pytest.mark.parametrize("topic", ["fleet/bike-1/status", "fleet/bike-1/cmd/ack", "fleet/bike-1/nmea", "elsewhere"])
def test_size_limit_holds_on_every_topic_and_only_a_prefix_is_kept(topic: str) -> None:
    big = b"online" + b" " * (4 * 1024 * 1024)
    out = classify([msg(topic, big)], fresh(), now=NOW)
    [dead] = out.entry.dead
    assert (dead.reason, dead.size, len(dead.payload)) == ("oversize", len(big), MAX_PAYLOAD)
    assert out.status == {} and out.acks == []


def test_a_decoder_exception_is_a_dead_letter_and_a_warning_and_the_batch_goes_on() -> None:
    def broken(message: RawMessage, **_: object) -> decoders.Decoded:
        if b"boom" in message.payload:
            raise RecursionError("maximum recursion depth exceeded")
        return decoders.decode(message, **_)  # type: ignore[arg-type]

    intake = dataclasses.replace(fresh(), decode=broken)
    out = classify([msg("fleet/bike-1/telemetry", b"boom"), msg("fleet/bike-2/telemetry", report())], intake, now=NOW)
    assert len(out.entry.records) == 1
    assert [(d.reason, d.detail) for d in out.entry.dead] == [
        ("decoder_error", "RecursionError: maximum recursion depth exceeded")
    ]
    assert [key for key, _ in out.warnings] == ["decoder_error"]


@pytest.mark.parametrize("topic", ["fleet/bike-1/telemetry", "owntracks/bike-1/phone", "fleet/bike-1/cmd/ack"])
def test_deep_nesting_is_one_dead_letter_on_every_json_topic(topic: str) -> None:
    payload = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    out = classify([msg(topic, payload), msg("fleet/bike-2/telemetry", report())], fresh(), now=NOW)
    assert [d.reason for d in out.entry.dead] == ["too_deep"]
    assert len(out.entry.records) == 1


def test_the_budget_lasts_across_batches_and_is_counted() -> None:
    intake = fresh(per_minute=3)
    junk = [msg("fleet/bike-1/telemetry", b"{")] * 2
    first = classify(junk, intake, now=NOW)
    second = classify(junk, intake.with_known(intake.known), now=NOW + timedelta(seconds=1))
    third = classify(junk, intake, now=NOW + timedelta(seconds=2))
    assert [len(o.entry.dead) for o in (first, second, third)] == [2, 1, 0]
    assert second.counters == {"dead_dropped:bad_json": 1} and third.counters == {"dead_dropped:bad_json": 2}
    assert [k for k, _ in second.warnings] == ["dead_letter_budget"] and third.warnings == []
