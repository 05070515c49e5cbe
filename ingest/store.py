"""Writing a batch to TimescaleDB: one binary COPY into a staging table, one merge into the hypertable.

The merge's `ON CONFLICT DO NOTHING` on (device_id, time) is what makes the whole pipeline
exactly-once in effect: QoS 1 redeliveries, a device's resends and a stream entry replayed after a
worker crash all collapse onto the row already there, and a late record lands in its place in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from gateway.records import DeadLetter, Telemetry

COLUMNS = (
    "time", "device_id", "received_at", "source", "lat", "lon", "altitude_m", "speed_kmh",
    "heading_deg", "accuracy_m", "fix", "satellites", "hdop", "battery_pct", "odometer_m",
    "locked", "faults",
)  # fmt: skip
TYPES = (
    "timestamptz", "text", "timestamptz", "text", "float8", "float8", "float4", "float4",
    "float4", "float4", "int2", "int2", "float4", "float4", "float8", "bool", "text[]",
)  # fmt: skip

_STAGE = "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (LIKE telemetry) ON COMMIT DELETE ROWS"
_COPY = f"COPY telemetry_stage ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_MERGE = (
    f"INSERT INTO telemetry ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM telemetry_stage"
    " ON CONFLICT (device_id, time) DO NOTHING"
)
_DEAD = (
    "INSERT INTO dead_letters (stream_entry, seq, received_at, topic, device_id, reason, detail, payload)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    staged: int
    inserted: int
    dead_letters: int

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter with its stream position, so a replayed entry cannot store it twice."""

    stream_entry: str
    seq: int
    letter: DeadLetter


def telemetry_row(record: Telemetry, received_at: datetime) -> tuple[object, ...]:
    return (
        record.time, record.device_id, received_at, str(record.source), record.lat, record.lon,
        record.altitude_m, record.speed_kmh, record.heading_deg, record.accuracy_m, record.fix,
        record.satellites, record.hdop, record.battery_pct, record.odometer_m, record.locked,
        list(record.faults) if record.faults else None,
    )  # fmt: skip


def write_batch(
    conn: psycopg.Connection,
    rows: Sequence[tuple[object, ...]],
    dead: Sequence[DeadRow],
) -> WriteResult:
    """All or nothing, in one transaction: the caller acknowledges the stream only after this returns."""
    inserted = 0
    with conn.transaction():
        if rows:
            conn.execute(_STAGE)
            with conn.cursor() as cur:
                with cur.copy(_COPY) as copy:
                    copy.set_types(TYPES)
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_MERGE)
                inserted = cur.rowcount
        if dead:
            with conn.cursor() as cur:
                cur.executemany(
                    _DEAD,
                    [
                        (d.stream_entry, d.seq, d.letter.received_at, d.letter.topic, d.letter.device_id,
                         d.letter.reason, d.letter.detail, d.letter.payload)
                        for d in dead
                    ],
                )  # fmt: skip
    return WriteResult(staged=len(rows), inserted=inserted, dead_letters=len(dead))
