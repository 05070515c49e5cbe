"""Dead letters into PostgreSQL, for every stage that refuses something (ingest, geofence, commands):
one row per (stream entry, position), so a replayed entry stores its letters once, and the test of
whether a database error is the data's fault (`refusal`), which decides between retrying a batch and
splitting it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import errors

from kernel.deadletters import storable
from kernel.records import DeadLetter
from kernel.streams import Quarantined
from kernel.wire import FIELD

_DEAD = (
    "INSERT INTO dead_letters"
    " (stream_entry, seq, received_at, topic, device_id, reason, detail, payload, count, size, sha256)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter with its stream position, so a replayed entry cannot store it twice."""

    stream_entry: str
    seq: int
    letter: DeadLetter


def dead_row(dead: DeadRow) -> tuple[object, ...]:
    """One dead_letters row, bounded and with text PostgreSQL can hold whatever the letter carries
    (one from an older gateway, or a corrupt stream entry, may be whole; a detail may quote a NUL)."""
    d = storable(dead.letter)
    return (dead.stream_entry, dead.seq, d.received_at, d.topic, d.device_id, d.reason, d.detail, d.payload,
            d.count, d.size, d.sha256)  # fmt: skip


def insert_dead_letters(conn: psycopg.Connection, dead: Sequence[DeadRow]) -> None:
    """Dead letters, each once per stream position, bounded and with text PostgreSQL can hold
    (`dead_row`): a dead letter exists to hold what the database would refuse elsewhere."""
    if not dead:
        return
    with conn.cursor() as cur:
        cur.executemany(_DEAD, [dead_row(d) for d in dead])


def quarantine_rows(
    stream: str, entries: Sequence[Quarantined], now: datetime, *, key_prefix: str = ""
) -> list[DeadRow]:
    """One `quarantined` dead letter per worn-out stream entry, with the entry's bytes, keyed by the
    entry (position 0, as a corrupt entry), so a crash before the stream step stores it once."""
    return [
        DeadRow(key_prefix + q.entry_id.decode(), 0, DeadLetter(
            stream, q.fields.get(FIELD, b""), "quarantined", now, detail=f"delivered {q.deliveries} times, never done"))
        for q in entries
    ]  # fmt: skip


def refusal(exc: Exception) -> str | None:
    """The reason a batch was refused for good (data the tables cannot hold), or None when the error
    is transient or not the data's fault (connection lost, serialization failure: retry as is).

    Dumping a value can fail before the server sees it (psycopg's `DataError` for NUL, `ValueError`
    or `OverflowError` for a number out of a binary type's range); such an error is the data's too.
    """
    if isinstance(exc, errors.UniqueViolation):
        return None  # the merge path handles duplicates; never a reason to drop a record
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        state = exc.sqlstate or "client"
        return f"{state} {exc.diag.message_primary or exc}".strip()
    if isinstance(exc, ValueError | OverflowError | UnicodeError):
        return f"client {type(exc).__name__}: {exc}"
    return None
