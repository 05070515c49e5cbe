"""The ingest worker: Redis stream → live state + TimescaleDB, acknowledging after the commit.

Workers share the stream through one consumer group. An entry is acknowledged (and deleted) only
after its rows are committed, so a worker killed mid-batch leaves its entries pending; the next
worker to start claims them after `CLAIM_IDLE_MS`. While the database is down the worker keeps
retrying the same batch and reads nothing new: the stream itself is the buffer, and Redis keeps it
on disk (append-only file).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import psycopg
import redis

from gateway.ratelimit import RateLimitedLog
from gateway.records import DeadLetter
from gateway.wire import FIELD, decode_entry
from ingest.livestate import LiveState, latest_patches
from ingest.store import DeadRow, WriteResult, telemetry_row, write_batch

log = logging.getLogger(__name__)

T = TypeVar("T")

BLOCK_MS = 200
POSITIONS_STREAM = "fleet:positions"  # committed batches, for the geofence/trip worker
POSITIONS_MAXLEN = 200_000  # entries kept if no geofence worker reads them (about 10^7 records)
CLAIM_IDLE_MS = 15_000
DB_RETRY_S = 1.0


@dataclass(slots=True)
class IngestStats:
    entries: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0


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
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._database_url = database_url
        self._conn: psycopg.Connection | None = None
        self._stream = stream_key
        self._group = group
        self._count = batch_entries
        self._consumer = consumer or f"ingest-{socket.gethostname()}-{os.getpid()}"
        self._live = LiveState(self._redis)
        self._warn = RateLimitedLog(log)
        self._recovered = False
        self.stats = IngestStats()

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event) -> None:
        self._retry(stop, self.ensure_group)
        try:
            while not stop.is_set():
                entries = self._retry(stop, self._read)
                if entries:
                    self._process(entries, stop)
        finally:
            if self._conn is not None:
                self._conn.close()
            self._redis.close()

    # -- reading ------------------------------------------------------------------------------------
    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not self._recovered:
            # Our own pending entries first (we died before acknowledging), then other dead workers'.
            mine = self._redis.xreadgroup(self._group, self._consumer, {self._stream: "0"}, count=self._count)
            pending = mine[0][1] if mine else []
            if pending:
                return pending
            claimed = self._redis.xautoclaim(
                self._stream, self._group, self._consumer, CLAIM_IDLE_MS, "0-0", count=self._count
            )
            self._recovered = True
            if claimed[1]:
                self._recovered = False  # there may be more to claim
                return claimed[1]
        reply = self._redis.xreadgroup(
            self._group, self._consumer, {self._stream: ">"}, count=self._count, block=BLOCK_MS
        )
        return reply[0][1] if reply else []

    # -- processing ---------------------------------------------------------------------------------
    def _process(self, entries: list[tuple[bytes, dict[bytes, bytes]]], stop: threading.Event) -> None:
        rows: list[tuple[object, ...]] = []
        dead: list[DeadRow] = []
        patches_records = []
        patches_received = []
        ids = []
        committed: list[bytes] = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:  # deleted while pending: nothing to store
                continue
            sid = entry_id.decode()
            try:
                entry = decode_entry(fields[FIELD])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                letter = DeadLetter(self._stream, fields.get(FIELD, b""), "corrupt_entry", datetime.now(UTC),
                                    detail=str(exc)[:200])  # fmt: skip
                dead.append(DeadRow(sid, 0, letter))
                continue
            if entry.records:
                committed.append(fields[FIELD])
            rows.extend(map(telemetry_row, entry.records, entry.received_at))
            patches_records.extend(entry.records)
            patches_received.extend(entry.received_at)
            dead.extend(DeadRow(sid, i, letter) for i, letter in enumerate(entry.dead, start=1))
        self._retry(stop, lambda: self._live.apply(latest_patches(patches_records, patches_received)))
        result = self._retry(stop, lambda: self._write(rows, dead))
        if result is None:  # stopping: leave the entries pending for whoever comes next
            return
        self._retry(stop, lambda: self._ack(ids, result, committed))
        self.stats.entries += len(ids)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += result.dead_letters

    def _write(self, rows: list[tuple[object, ...]], dead: list[DeadRow]) -> WriteResult:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._database_url, connect_timeout=5)
        try:
            return write_batch(self._conn, rows, dead)
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise

    def _ack(self, ids: list[bytes], result: WriteResult, committed: list[bytes]) -> None:
        """Hand the committed entries on to the geofence stream and acknowledge them, atomically."""
        pipe = self._redis.pipeline(transaction=True)
        for raw in committed:
            pipe.xadd(POSITIONS_STREAM, {FIELD: raw}, maxlen=POSITIONS_MAXLEN, approximate=True)
        pipe.xack(self._stream, self._group, *ids)
        pipe.xdel(self._stream, *ids)
        pipe.hincrby("fleet:counters", "stored", result.inserted)
        pipe.hincrby("fleet:counters", "duplicates", result.duplicates)
        pipe.execute()

    def _retry(self, stop: threading.Event, action: Callable[[], T]) -> T | None:
        """Run `action` until it succeeds; transient server errors only delay, never drop, a batch."""
        while True:
            try:
                return action()
            except (redis.RedisError, psycopg.OperationalError, OSError) as exc:
                self._warn.warning(type(exc).__name__, "ingest retrying after: %s", exc)
                if stop.wait(DB_RETRY_S):
                    return None


def run_ingest(redis_url: str, database_url: str, stream_key: str, group: str, batch_entries: int) -> None:
    from gateway.process import stop_on_signals

    stop = stop_on_signals()
    IngestWorker(redis_url, database_url, stream_key=stream_key, group=group, batch_entries=batch_entries).run(stop)
