"""COPY rows and the write plan: the pure part of ingest's store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from ingest.store import COLUMNS, KEY, TYPES, WritePlan, WriteResult, telemetry_rows
from kernel.deadletter_store import DeadRow, dead_row
from kernel.deadletters import MAX_PAYLOAD
from kernel.records import DeadLetter, Source, Telemetry

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_rows_come_in_key_order_and_each_device_keeps_its_order() -> None:
    records = [Telemetry(d, T0 + timedelta(seconds=s), Source.JSON, 52.5, 13.4) for s in range(3) for d in "bca"]
    keys = [{"a": 7, "b": 3, "c": 5}[r.device_id] for r in records]
    rows = telemetry_rows(records, [T0] * len(records), keys)
    assert [(row[KEY], row[COLUMNS.index("device_id")]) for row in rows] == [
        (3, "b"), (3, "b"), (3, "b"), (5, "c"), (5, "c"), (5, "c"), (7, "a"), (7, "a"), (7, "a"),
    ]  # fmt: skip
    assert [row[COLUMNS.index("time")] for row in rows[:3]] == [T0 + timedelta(seconds=s) for s in range(3)]


def test_a_row_has_every_column_in_order() -> None:
    record = Telemetry("b", T0, Source.NMEA, 52.5, 13.4, 35.0, 18.0, 90.0, 4.0, 3, 9, 0.8, 77.0, 1234.5, True, ("E1",))
    received = T0 + timedelta(seconds=1)
    (row,) = telemetry_rows([record], [received], [42])
    assert len(row) == len(COLUMNS) == len(TYPES)
    assert dict(zip(COLUMNS, row, strict=True)) == {
        "time": T0, "device_id": "b", "device_key": 42, "received_at": received, "source": Source.NMEA,
        "lat": 52.5, "lon": 13.4, "altitude_m": 35.0, "speed_kmh": 18.0, "heading_deg": 90.0,
        "accuracy_m": 4.0, "fix": 3, "satellites": 9, "hdop": 0.8, "battery_pct": 77.0,
        "odometer_m": 1234.5, "locked": True, "faults": ["E1"],
    }  # fmt: skip


def test_no_faults_is_stored_as_null() -> None:
    (row,) = telemetry_rows([Telemetry("b", T0, Source.JSON)], [T0], [1])
    assert row[COLUMNS.index("faults")] is None


def test_after_a_conflict_the_next_batches_merge_then_copy_again() -> None:
    plan = WritePlan()
    assert not plan.use_merge()
    plan.after(WriteResult(staged=10, inserted=8, dead_letters=0, merged=True))
    merges = 0
    while plan.use_merge():
        merges += 1
        plan.after(WriteResult(staged=10, inserted=10, dead_letters=0, merged=True))
    assert merges == 20
    plan.after(WriteResult(staged=10, inserted=10, dead_letters=0))
    assert not plan.use_merge()


def test_a_dead_letter_row_is_bounded_and_its_text_storable_whatever_it_carries() -> None:
    """A letter from an older gateway, or a corrupt stream entry, arrives whole and unescaped."""
    raw = b"\x00" * 100_000
    letter = DeadLetter("fleet/\x00/telemetry", raw, "corrupt_entry", T0, "bike\x00", "detail \x00 \ud800")
    row = dead_row(DeadRow("1-0", 3, letter))
    stream_entry, seq, _at, topic, device_id, reason, detail, payload, count, size, sha256 = row
    assert (stream_entry, seq, reason, count, size) == ("1-0", 3, "corrupt_entry", 1, 100_000)
    assert (len(payload), sha256) == (MAX_PAYLOAD, hashlib.sha256(raw).digest())  # type: ignore[arg-type]
    for text in (topic, device_id, detail):
        assert "\x00" not in text  # type: ignore[operator]
        text.encode()  # type: ignore[union-attr]
