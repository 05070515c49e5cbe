"""The ingest worker: Redis stream → live state + TimescaleDB, acknowledging after the commit.

Workers share the stream through one consumer group. An entry is acknowledged (and deleted) only
after its rows are committed, so a worker killed mid-batch leaves its entries pending: a worker
restarted under the same name (`instance`) takes its own pending entries back at once, and every
worker claims entries another consumer has left idle for `claim_idle_ms` (checked every
`CLAIM_CHECK_S` at most), so a worker that never comes back delays its entries but loses none. While the
database is down the worker keeps retrying the same batch and reads nothing new: the stream itself
is the buffer, and Redis keeps it on disk (append-only file).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import psycopg
import redis
from psycopg import errors

from ingest.positions import POSITIONS_MAX_BYTES, PositionsHandoff
from ingest.store import DeviceKeys, WritePlan, WriteResult, telemetry_row, telemetry_rows, write_batch, write_refusing
from kernel import keys, metrics
from kernel.deadletter_store import DeadRow, insert_dead_letters, quarantine_rows, refusal
from kernel.livestate import LiveState, latest_patches
from kernel.poison import Refused
from kernel.ratelimit import RateLimitedLog
from kernel.records import DeadLetter, Telemetry
from kernel.settings import DURABLE_COMMIT
from kernel.streams import Entries, GroupReader, Quarantined, stream_client
from kernel.streams import split_entries as _split
from kernel.wire import FIELD, decode_entry

log = logging.getLogger(__name__)

T = TypeVar("T")

BLOCK_MS = 200
POSITIONS_STREAM = keys.POSITIONS_STREAM  # committed batches, for the geofence/trip worker
CLAIM_IDLE_MS = 15_000  # an entry pending this long at another consumer is taken over
CLAIM_CHECK_S = 5.0
MAX_ROWS = 50_000  # rows per transaction; a read of many large entries is split
DB_RETRY_S = 1.0
FAILURE_PAUSE_S = 0.2  # after an unexpected failure, before reading the same entries again
DEAD_PAYLOAD_MAX = 4096  # bytes of a refused record's text kept in its dead letter


@dataclass(slots=True)
class IngestStats:
    entries: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    claimed: int = 0
    refused: int = 0  # records the database refused for good, dead-lettered
    quarantined: int = 0  # entries that kept failing, moved to the quarantine stream
    failures: int = 0  # unexpected exceptions survived
    positions_dropped: int = 0  # records trimmed from fleet:positions before geofence processed them


@dataclass(slots=True)
class _Batch:
    """The decoded content of some stream entries, ready for one transaction."""

    ids: list[bytes]
    dead: list[DeadRow]
    records: list[Telemetry]
    received: list[datetime]
    committed: list[tuple[bytes, int, bytes]]  # entries with records: raw, record count, id; for geofence
    origins: list[tuple[str, int]]  # (stream entry, record's position in it) of each record


class IngestWorker:
    def __init__(
        self,
        redis_url: str,
        database_url: str,
        *,
        stream_key: str,
        group: str,
        batch_entries: int = 200,
        consumer: str | None = None,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        positions_max_bytes: int = POSITIONS_MAX_BYTES,
    ) -> None:
        self._redis = stream_client(redis_url)
        self._handoff = PositionsHandoff(self._redis, positions_max_bytes)
        self._database_url = database_url
        self._conn: psycopg.Connection | None = None
        self._plan = WritePlan()
        self._keys = DeviceKeys()
        self._stream = stream_key
        self._group = group
        self._reader = GroupReader(
            self._redis, stream_key, group, consumer or ingest_consumer_name(), count=batch_entries,
            block_ms=BLOCK_MS, claim_idle_ms=claim_idle_ms, claim_check_s=CLAIM_CHECK_S,
        )  # fmt: skip
        self._live = LiveState(self._redis)
        self._warn = RateLimitedLog(log)
        self.stats = IngestStats()

    @property
    def consumer(self) -> str:
        return self._reader.consumer

    def run(self, stop: threading.Event) -> None:
        self._retry(stop, self._reader.ensure_group)
        try:
            while not stop.is_set():
                read = self._retry(stop, self._reader.read)
                if read is None:
                    break
                self.stats.claimed = self._reader.claimed
                if read.quarantine:
                    self._guarded(stop, lambda q=read.quarantine: self._quarantine(q, stop))
                entries = read.entries
                while entries and not stop.is_set():
                    chunk, entries = _split(entries, MAX_ROWS)
                    self._guarded(stop, lambda c=chunk: self._process(c, stop))
        finally:
            if self._conn is not None:
                self._conn.close()
            self._redis.close()
            s = self.stats
            log.info(
                "ingest %s stopped: %d entries, %d rows inserted, %d duplicates folded, %d entries claimed,"
                " %d rows refused, %d entries quarantined",
                *(self.consumer, s.entries, s.inserted, s.duplicates, s.claimed, s.refused, s.quarantined),
            )

    def _guarded(self, stop: threading.Event, action: Callable[[], object]) -> None:
        """No exception ends the loop: an unexpected one is logged (rate-limited) and the entries
        stay pending, to be read again one at a time and quarantined if they keep failing."""
        try:
            action()
        except Exception as exc:
            self.stats.failures += 1
            self._warn.warning("unexpected", "ingest failed on a batch (it will be retried): %r", exc)
            log.debug("ingest failure", exc_info=True)
            if self._conn is not None:  # start the next try on a fresh connection, whatever its state
                self._conn.close()
                self._conn = None
            self._reader.retry_pending()
            stop.wait(FAILURE_PAUSE_S)

    # -- processing ---------------------------------------------------------------------------------
    def _process(self, entries: Entries, stop: threading.Event) -> None:
        batch = self._decode(entries)
        self._retry(stop, lambda: self._live.apply(latest_patches(batch.records, batch.received)))
        started = time.perf_counter()
        result = self._retry(stop, lambda: self._write(batch))
        if result is None:  # stopping: leave the entries pending for whoever comes next
            return
        metrics.COMMIT_SECONDS.labels("ingest").observe(time.perf_counter() - started)
        metrics.MESSAGES_IN.labels("ingest").inc(len(batch.records))
        metrics.BATCH_SIZE.labels("ingest").observe(len(batch.records))
        for row in batch.dead:
            metrics.DEAD_LETTERS.labels("ingest", row.letter.reason).inc()
        self._retry(stop, lambda: self._ack(batch, result))
        self.stats.entries += len(batch.ids)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += result.dead_letters

    def _decode(self, entries: Entries) -> _Batch:
        batch = _Batch([], [], [], [], [], [])
        for entry_id, fields in entries:
            batch.ids.append(entry_id)
            if not fields:  # deleted while pending: nothing to store
                continue
            sid = entry_id.decode()
            try:
                entry = decode_entry(fields[FIELD])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                letter = DeadLetter(self._stream, fields.get(FIELD, b""), "corrupt_entry", datetime.now(UTC),
                                    detail=str(exc)[:200])  # fmt: skip
                batch.dead.append(DeadRow(sid, 0, letter))
                continue
            if entry.records:
                batch.committed.append((fields[FIELD], len(entry.records), entry_id))
            batch.records.extend(entry.records)
            batch.origins.extend((sid, i) for i in range(len(entry.records)))
            batch.received.extend(entry.received_at)
            batch.dead.extend(DeadRow(sid, i, letter) for i, letter in enumerate(entry.dead, start=1))
        return batch

    def _write(self, batch: _Batch) -> WriteResult:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._database_url, connect_timeout=5, application_name=f"fleet {self.consumer}"[:63],
                options=DURABLE_COMMIT,
            )  # fmt: skip
            self._plan = WritePlan()
        try:
            keys = self._keys.keys_for(self._conn, batch.records)
            rows = telemetry_rows(batch.records, batch.received, keys)
            try:
                return write_batch(self._conn, rows, batch.dead, self._plan)
            except Exception as exc:
                if refusal(exc) is None:
                    raise
                self._warn.warning("refused", "the database refused a batch, finding its bad records: %s", exc)
            return self._write_refusing(batch, keys)
        except errors.TransactionRollback:
            raise  # deadlock or serialization failure with another worker: rolled back, retry as is
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise

    def _write_refusing(self, batch: _Batch, keys: list[int]) -> WriteResult:
        """The batch again, unsorted so each row's origin is known, split until the refused rows
        stand alone; each becomes a dead letter at its stream position (seq -1 - its index in the
        entry, apart from the entry's own dead letters at 1, 2, ...)."""
        assert self._conn is not None
        rows = [telemetry_row(r, t, k) for r, t, k in zip(batch.records, batch.received, keys, strict=True)]
        now = datetime.now(UTC)

        def letters(refused: list[Refused[int]]) -> list[DeadRow]:
            out = list(batch.dead)
            for r in refused:
                record, (sid, i) = batch.records[r.index], batch.origins[r.index]
                raw = repr(record).encode("utf-8", "backslashreplace")[:DEAD_PAYLOAD_MAX]
                letter = DeadLetter(self._stream, raw, "db_refused", now, record.device_id, r.reason)
                out.append(DeadRow(sid, -1 - i, letter))
            return out

        result, refused = write_refusing(self._conn, rows, letters)
        self.stats.refused += len(refused)
        return result

    def _quarantine(self, entries: list[Quarantined], stop: threading.Event) -> None:
        """Entries that failed `MAX_DELIVERIES` times: dead letters first, then the quarantine stream."""
        dead = quarantine_rows(self._stream, entries, datetime.now(UTC))

        def store() -> None:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = psycopg.connect(self._database_url, connect_timeout=5, options=DURABLE_COMMIT)
            with conn.transaction():
                insert_dead_letters(conn, dead)

        if self._retry(stop, store) is None and stop.is_set():
            return
        self._retry(stop, lambda: self._reader.quarantine(entries, reason="too many deliveries"))
        self.stats.quarantined += len(entries)
        self.stats.dead_letters += len(entries)

    def _ack(self, batch: _Batch, result: WriteResult) -> None:
        """Hand the committed entries on to the geofence stream and acknowledge them, atomically."""
        pipe = self._redis.pipeline(transaction=True)
        if batch.committed:
            self._handoff.add(pipe, batch.committed)
        pipe.xack(self._stream, self._group, *batch.ids)
        pipe.xdel(self._stream, *batch.ids)
        pipe.hincrby(keys.COUNTERS, "stored", result.inserted)
        pipe.hincrby(keys.COUNTERS, "duplicates", result.duplicates)
        replies = pipe.execute()
        if batch.committed and replies[0][0]:
            records, entries = int(replies[0][0]), int(replies[0][1])
            self.stats.positions_dropped += records
            self._warn.warning(
                "positions_dropped",
                "fleet:positions is over its bound (%d bytes): %d records in %d entries were dropped before the"
                " geofence stage processed them (counted as positions_dropped in fleet:counters)",
                *(self._handoff.max_bytes, records, entries),
            )

    def _retry(self, stop: threading.Event, action: Callable[[], T]) -> T | None:
        """Run `action` until it succeeds; transient server errors only delay, never drop, a batch."""
        while True:
            try:
                return action()
            except (redis.RedisError, psycopg.OperationalError, OSError) as exc:
                self._warn.warning(type(exc).__name__, "ingest retrying after: %s", exc)
                if stop.wait(0.05 if isinstance(exc, errors.TransactionRollback) else DB_RETRY_S):
                    return None


def ingest_consumer_name(instance: str | None = None) -> str:
    """`ingest-<instance>`; the instance defaults to `FLEET_INGEST_ID`, then host name and pid.

    A stable name lets a restarted worker take back its own pending entries immediately; without
    one, another worker claims them after `CLAIM_IDLE_MS`.
    """
    return f"ingest-{instance or os.environ.get('FLEET_INGEST_ID') or f'{socket.gethostname()}-{os.getpid()}'}"


def run_ingest(
    redis_url: str,
    database_url: str,
    stream_key: str,
    group: str,
    batch_entries: int,
    instance: str | None = None,
    positions_max_bytes: int = POSITIONS_MAX_BYTES,
) -> None:
    from kernel.process import quiet_collector, stop_on_signals

    stop = stop_on_signals()
    quiet_collector()
    worker = IngestWorker(
        redis_url, database_url, stream_key=stream_key, group=group, batch_entries=batch_entries,
        consumer=ingest_consumer_name(instance), positions_max_bytes=positions_max_bytes,
    )  # fmt: skip
    worker.run(stop)
