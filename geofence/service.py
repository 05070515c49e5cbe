"""The geofence worker: committed positions → zone events, trips and the utilization rollup.

It reads the stream `fleet:positions` (the ingest worker adds each committed stream entry to it) with
its own consumer group, so it never slows ingest down and never sees a position that is not stored.
Per read: decode the entries into one `PositionBatch`, load the batch's devices' zone state and trip
cursors from Redis, run the pure core (`transitions`, then `continue_trips` for trips across
batches), write events, trips and the touched utilization hours in one transaction, then save the
state, publish the events and acknowledge the entries in one Redis transaction.

At-least-once with idempotent writes, like ingest: a crash between the commit and the Redis step
replays the entries from the old state, which recomputes the same events (skipped by their unique
key) and the same trips (upserted). Events may be published twice on the channel in that case.

One worker per stream: events are sequential per device, so two workers in the group would race on a
device's state. Run it under a stable name (`FLEET_GEOFENCE_ID`) so a restart takes its own pending
entries back at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import orjson
import psycopg
import redis

from geofence import store
from geofence.batch import PositionBatch
from geofence.errors import GeofenceError, StateError
from geofence.handoff_order import Source, parse_id, release
from geofence.state import DeviceState
from geofence.transitions import TransitionParams, ZoneEvent, transitions
from geofence.tripcursor import TripCursor, continue_trips, positions, rollup_since
from geofence.trips import Trip, TripParams
from geofence.zoneset import ZoneSet
from kernel import keys, metrics
from kernel.deadletter_store import DeadRow, insert_dead_letters, quarantine_rows, refusal
from kernel.poison import split_refused
from kernel.ratelimit import RateLimitedLog
from kernel.records import DeadLetter, Telemetry
from kernel.settings import DURABLE_COMMIT
from kernel.streams import Entries, GroupReader, Quarantined, split_entries, stream_client
from kernel.wire import FIELD, decode_entry

log = logging.getLogger(__name__)

T = TypeVar("T")

POSITIONS_STREAM = keys.POSITIONS_STREAM  # written by ingest.service after each commit
GROUP = "geofence"
STATE_KEY = keys.GEOFENCE_STATE  # hash: device id → DeviceState.to_bytes()
TRIPS_KEY = keys.GEOFENCE_TRIPS  # hash: device id → TripCursor.to_bytes()
EVENTS_CHANNEL = keys.EVENTS_CHANNEL  # one JSON message per zone event
COUNTERS = keys.COUNTERS

# ARGV: the channel, then the messages. One command for a batch's events instead of one PUBLISH each:
# packing and answering thousands of commands was most of the commit's cost when every position is
# a transition. Subscribers still get one message per event.
_PUBLISH_ALL = """
for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return #ARGV - 1
"""

BLOCK_MS = 200
CLAIM_IDLE_MS = 15_000
CLAIM_CHECK_S = 5.0
ZONE_POLL_S = 1.0  # how often the zone catalog version is compared (one tiny query)
ROLLUP_TICK_S = 60.0  # the whole fleet's current hour is recomputed this often
ROLLUP_CATCHUP_S = 7 * 86400.0  # on start, hours missed while no worker ran are filled back this far
RETRY_S = 1.0
FAILURE_PAUSE_S = 0.2  # after an unexpected failure, before reading the same entries again
HOLD_MAX_ENTRIES = 1_000  # entries held back for ingest's order before reading pauses
MAX_POSITIONS = 100_000
"""Positions per transaction: a read of 100 entries under full load can hold a million (an entry is
one gateway batch); processed whole it took minutes and gigabytes between two acknowledgements.
Large parts still amortise the per-device work (state, cursors, trips) over many positions."""


@dataclass(slots=True)
class GeofenceStats:
    entries: int = 0
    positions: int = 0
    events: int = 0
    trips: int = 0
    skipped: int = 0  # positions or entries refused as bad data
    failures: int = 0  # unexpected exceptions survived
    quarantined: int = 0  # entries that kept failing, moved to the quarantine stream
    zone_reloads: int = 0


@dataclass(slots=True)
class _Work:
    """What one read produced, carried from the pure step to the two writes."""

    events: list[ZoneEvent] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)
    trips: list[Trip] = field(default_factory=list)
    cursors: dict[str, TripCursor] = field(default_factory=dict)
    rollup_since: float | None = None
    now: float = 0.0
    first_entry: str = ""  # the read's first stream entry: names its refused rows' dead letters
    positions: int = 0  # positions taken from the read, counted as `geofenced` with the acknowledgement


class GeofenceWorker:
    def __init__(
        self,
        redis_url: str,
        database_url: str,
        *,
        consumer: str | None = None,
        batch_entries: int = 100,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        hysteresis_m: float = 10.0,
        transition_params: TransitionParams | None = None,
        trip_params: TripParams | None = None,
        ingest_stream: str = keys.INGEST_STREAM,
        ingest_group: str = "ingest",
    ) -> None:
        self._redis = stream_client(redis_url)
        self._database_url = database_url
        self._conn: psycopg.Connection | None = None
        self._reader = GroupReader(
            self._redis, POSITIONS_STREAM, GROUP, consumer or geofence_consumer_name(), count=batch_entries,
            block_ms=BLOCK_MS, claim_idle_ms=claim_idle_ms, claim_check_s=CLAIM_CHECK_S,
        )  # fmt: skip
        self._tparams = transition_params or TransitionParams()
        self._trip_params = trip_params or TripParams()
        self._zones = ZoneSet(hysteresis_m=hysteresis_m)
        self._zone_version = 0
        self._zones_due = 0.0
        self._rollup_due = 0.0
        self._rollup_from: float | None = None
        self._warn = RateLimitedLog(log)
        self._publish_all = self._redis.register_script(_PUBLISH_ALL)
        self._ingest_stream, self._ingest_group = ingest_stream, ingest_group
        self._held: Entries = []  # read, waiting for ingest's watermark (geofence.handoff_order)
        self.stats = GeofenceStats()

    @property
    def consumer(self) -> str:
        return self._reader.consumer

    @property
    def zones(self) -> ZoneSet:
        return self._zones

    def run(self, stop: threading.Event) -> None:
        self._retry(stop, self._reader.ensure_group)
        try:
            while not stop.is_set():
                if self._retry(stop, self._housekeeping) is None:
                    break
                entries = self._next_entries(stop)
                if entries is None:
                    break
                while entries and not stop.is_set():  # in parts, in order; after a failure the rest
                    chunk, entries = split_entries(entries, MAX_POSITIONS)  # is read again, in order
                    if not self._guarded(stop, lambda c=chunk: self._process(c, stop)):
                        self._held = []  # pending in the group: they come back with the failed part
                        break
        finally:
            if self._conn is not None:
                self._conn.close()
            self._redis.close()

    def _next_entries(self, stop: threading.Event) -> Entries | None:
        """New entries and those held back, in ingest's order up to its watermark (see
        `geofence.handoff_order`); None when stopping. While many are held (an ingest worker is
        stuck on an early entry, claimed by another after 15 s), nothing more is read."""
        if len(self._held) < HOLD_MAX_ENTRIES:
            read = self._retry(stop, self._reader.read)
            if read is None:
                return None
            if read.quarantine:
                self._guarded(stop, lambda q=read.quarantine: self._quarantine(q, stop))
            known = {eid for eid, _ in self._held}
            self._held += [e for e in read.entries if e[0] not in known]
        elif stop.wait(BLOCK_MS / 1000):
            return None
        if not self._held:
            return []
        watermark = self._retry(stop, self._ingest_watermark)
        if watermark is None:
            return None
        ready, self._held = release(self._held, watermark[0])
        return ready

    def _ingest_watermark(self) -> tuple[Source | None]:
        """The smallest id the ingest group holds pending (in a 1-tuple: None means none pending)."""
        try:
            info = self._redis.xpending(self._ingest_stream, self._ingest_group)
        except redis.ResponseError:  # no ingest group (positions written by other means): no order
            return (None,)
        return (parse_id(info["min"]) if info["pending"] else None,)

    def _guarded(self, stop: threading.Event, action: Callable[[], object]) -> bool:
        """No exception ends the loop: it is logged (rate-limited), the entries stay pending and are
        read again one at a time, and quarantined if they keep failing. False after a failure."""
        try:
            action()
            return True
        except Exception as exc:
            self.stats.failures += 1
            self._warn.warning("unexpected", "geofence failed on a batch (it will be retried): %r", exc)
            log.debug("geofence failure", exc_info=True)
            if self._conn is not None:
                self._conn.close()
            self._reader.retry_pending()
            stop.wait(FAILURE_PAUSE_S)
            return False

    def _quarantine(self, entries: list[Quarantined], stop: threading.Event) -> None:
        """Entries that failed `MAX_DELIVERIES` times: dead letters first, then the quarantine stream."""
        dead = quarantine_rows(POSITIONS_STREAM, entries, datetime.now(UTC), key_prefix=f"{POSITIONS_STREAM}/")

        def store_dead() -> None:
            with self._connection().transaction():
                insert_dead_letters(self._connection(), dead)

        if self._retry(stop, store_dead) is None:
            return
        self._retry(stop, lambda: self._reader.quarantine(entries, reason="too many deliveries"))
        self.stats.quarantined += len(entries)

    def _records(self, entries: Entries) -> list[Telemetry]:
        records: list[Telemetry] = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            try:
                records.extend(decode_entry(fields[FIELD]).records)
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                self.stats.skipped += 1
                self._warn.warning("corrupt", "geofence skipped corrupt entry %s: %s", entry_id, str(exc)[:200])
        return records

    # -- processing ---------------------------------------------------------------------------------
    def _process(self, entries: Entries, stop: threading.Event) -> None:
        batch, dropped = positions(self._records(entries))
        if dropped:
            self.stats.skipped += dropped
            self._warn.warning("bad_position", "geofence skipped %d positions outside lon/lat range", dropped)
        work = _Work(now=time.time())
        if len(batch):
            loaded = self._retry(stop, lambda: self._load(batch.device_ids))
            if loaded is None:
                return
            work = self._compute(batch, *loaded)
            work.first_entry = entries[0][0].decode()
            started = time.perf_counter()
            if self._retry(stop, lambda: self._write(work)) is None:
                return  # stopping: the entries stay pending and are replayed
            metrics.COMMIT_SECONDS.labels("geofence").observe(time.perf_counter() - started)
            metrics.MESSAGES_IN.labels("geofence").inc(len(batch))
            metrics.BATCH_SIZE.labels("geofence").observe(len(batch))
        work.positions = len(batch) + dropped
        if self._retry(stop, lambda: self._commit(work, [eid for eid, _ in entries])) is None:
            return
        self.stats.entries += len(entries)
        self.stats.positions += len(batch)
        self.stats.events += len(work.events)
        self.stats.trips += len(work.trips)

    def _load(self, device_ids: Sequence[str]) -> tuple[dict[str, DeviceState], dict[str, TripCursor]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(STATE_KEY, list(device_ids))
        pipe.hmget(TRIPS_KEY, list(device_ids))
        raw_states, raw_cursors = pipe.execute()
        return (
            self._decode_each(device_ids, raw_states, DeviceState.from_bytes),
            self._decode_each(device_ids, raw_cursors, TripCursor.from_bytes),
        )

    def _decode_each(self, ids: Sequence[str], raw: list[bytes | None], decode: Callable[[bytes], T]) -> dict[str, T]:
        """Corrupt stored state is dropped: the device starts afresh (at worst one `first_fix` enter)."""
        out: dict[str, T] = {}
        for device_id, data in zip(ids, raw, strict=True):
            if data is None:
                continue
            try:
                out[device_id] = decode(data)
            except StateError as exc:
                self._warn.warning("state", "geofence dropped stored state of %s: %s", device_id, exc)
        return out

    def _compute(self, batch: PositionBatch, prev: dict[str, DeviceState], cursors: dict[str, TripCursor]) -> _Work:
        now = time.time()
        try:
            events, states = transitions(prev, batch, self._zones, now, self._tparams)
            latest = now + self._tparams.max_future_s
            trips, new_cursors = continue_trips(cursors, batch, latest, self._trip_params)
        except GeofenceError as exc:  # refused input: skip the batch, never stop the loop
            self.stats.skipped += len(batch)
            self._warn.warning("batch", "geofence skipped a batch of %d positions: %s", len(batch), exc)
            return _Work(now=now)
        return _Work(events, states, trips, new_cursors, rollup_since(trips, cursors, self._trip_params), now)

    def _write(self, work: _Work) -> int:
        conn = self._connection()
        try:
            try:
                with conn.transaction():
                    return self._store(conn, work, work.events, work.trips)
            except Exception as exc:
                if refusal(exc) is None:
                    raise
                self._warn.warning("db_refused", "the database refused a batch, finding its bad rows: %s", exc)
            return self._write_refusing(conn, work)
        except psycopg.OperationalError:
            conn.close()
            raise

    def _store(self, conn: psycopg.Connection, work: _Work, events: Sequence[ZoneEvent], trips: Sequence[Trip]) -> int:
        inserted = store.insert_events(conn, events)
        store.upsert_trips(conn, trips)
        if work.rollup_since is not None:
            store.refresh_utilization(conn, work.rollup_since, work.now, sorted({t.device_id for t in trips}))
        return inserted

    def _write_refusing(self, conn: psycopg.Connection, work: _Work) -> int:
        """Events and trips split (each try in a savepoint) until every refused row stands alone;
        those are dead-lettered with the database's reason, the rest stored in the same transaction."""
        rows: list[ZoneEvent | Trip] = [*work.events, *work.trips]
        inserted = 0

        def attempt(part: Sequence[ZoneEvent | Trip]) -> None:
            nonlocal inserted
            with conn.transaction():
                events = [r for r in part if isinstance(r, ZoneEvent)]
                inserted += store.insert_events(conn, events)
                store.upsert_trips(conn, [r for r in part if isinstance(r, Trip)])

        with conn.transaction():
            split = split_refused(rows, attempt, refusal)
            refused = split.refused_indices
            kept_trips = [t for i, t in enumerate(work.trips, start=len(work.events)) if i not in refused]
            self._store(conn, work, [], kept_trips)  # the rollup, over the trips that were stored
            now = datetime.now(UTC)
            insert_dead_letters(conn, [
                DeadRow(f"{POSITIONS_STREAM}/{work.first_entry}", r.index, DeadLetter(
                    POSITIONS_STREAM, repr(r.item).encode("utf-8", "backslashreplace")[:4096], "db_refused", now,
                    r.item.device_id, r.reason))
                for r in split.refused
            ])  # fmt: skip
        self.stats.skipped += len(split.refused)
        if split.refused:
            metrics.DEAD_LETTERS.labels("geofence", "db_refused").inc(len(split.refused))
        return inserted

    def _commit(self, work: _Work, ids: list[bytes]) -> bool:
        """State, live events and acknowledgement in one Redis transaction: all or nothing."""
        pipe = self._redis.pipeline(transaction=True)
        if work.states:
            pipe.hset(STATE_KEY, mapping={d: s.to_bytes() for d, s in work.states.items()})
        if work.cursors:
            pipe.hset(TRIPS_KEY, mapping={d: c.to_bytes() for d, c in work.cursors.items()})
        if work.events:
            self._publish_all(args=[EVENTS_CHANNEL, *map(event_message, work.events)], client=pipe)
        pipe.xack(POSITIONS_STREAM, GROUP, *ids)
        pipe.xdel(POSITIONS_STREAM, *ids)
        if work.events:
            pipe.hincrby(COUNTERS, "zone_events", len(work.events))
        if work.positions:
            pipe.hincrby(COUNTERS, "geofenced", work.positions)
        pipe.execute()
        return True

    # -- zones and the rollup timer -----------------------------------------------------------------
    def _housekeeping(self) -> bool:
        """Zones and the rollup timer. A failure that is not the servers' (a stored row the code
        cannot take) is logged and tried again at the next tick; it never stops positions."""
        mono = time.monotonic()
        try:
            if mono >= self._zones_due:
                self._zones_due = mono + ZONE_POLL_S
                self._refresh_zones()
            if mono >= self._rollup_due:
                self._rollup_due = mono + ROLLUP_TICK_S
                self._rollup_tick()
        except (redis.RedisError, psycopg.OperationalError, OSError):
            self._zones_due = self._rollup_due = 0.0  # transient: the caller retries at once
            raise
        except Exception as exc:
            self.stats.failures += 1
            self._warn.warning("housekeeping", "geofence housekeeping failed (next tick retries): %r", exc)
            if self._conn is not None:
                self._conn.close()
        return True

    def _refresh_zones(self) -> None:
        """Apply zones changed since the version we hold; only those are rasterised again."""
        conn = self._connection()
        version = store.zone_version(conn)
        if version == self._zone_version:
            return
        zones = self._zones
        if version < self._zone_version:  # a different (restored or re-created) database: start over
            zones, self._zone_version = ZoneSet(hysteresis_m=zones.hysteresis_m), 0
        changes = store.zone_changes(conn, self._zone_version)
        for zone_id, reason in changes.refused:
            self._warn.warning(f"zone:{zone_id}", "geofence ignores stored zone %s: %s", zone_id, reason)
        gone = [z for z in changes.removed if z in zones]
        if gone:
            zones = zones.without_zones(gone)
        if changes.changed:
            zones = zones.with_zones(changes.changed)
        self._zones, self._zone_version = zones, changes.version
        self.stats.zone_reloads += 1
        log.info("geofence zones at version %d: %d zones", changes.version, len(zones))

    def _rollup_tick(self) -> None:
        """Recompute the hours since the last tick for the whole fleet, so parked and silent vehicles
        accumulate idle time too; close trips whose vehicle has been silent past the trip gap."""
        now = time.time()
        conn = self._connection()
        if self._rollup_from is None:
            last = store.latest_rollup_hour(conn)
            self._rollup_from = now if last is None else max(last, now - ROLLUP_CATCHUP_S)
        with conn.transaction():
            store.refresh_utilization(conn, self._rollup_from, now)
            store.close_stale_trips(conn, now - self._trip_params.max_gap_s)
        self._rollup_from = now

    # -- connections --------------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._database_url, autocommit=True, connect_timeout=5, application_name=f"fleet {self.consumer}"[:63],
                options=DURABLE_COMMIT,  # positions are acknowledged after the commit, as in ingest
            )  # fmt: skip
        return self._conn

    def _retry(self, stop: threading.Event, action: Callable[[], T]) -> T | None:
        """Run `action` until it succeeds; a server away only delays the batch, never drops it."""
        while True:
            try:
                return action()
            except (redis.RedisError, psycopg.OperationalError, OSError) as exc:
                self._warn.warning(type(exc).__name__, "geofence retrying after: %s", exc)
                if isinstance(exc, psycopg.OperationalError) and self._conn is not None:
                    self._conn.close()
                if stop.wait(RETRY_S):
                    return None


def event_message(event: ZoneEvent) -> bytes:
    """The live-update message for one event (JSON, times in ISO 8601 UTC)."""
    violation = event.detail.get("violation")
    return orjson.dumps(
        {
            "type": "zone_event",
            "device_id": event.device_id,
            "zone_id": event.zone_id,
            "kind": event.kind.value,
            "violation": None if violation is None else str(violation),
            "time": store.iso(event.time),
            "lon": event.lon,
            "lat": event.lat,
            "detail": dict(event.detail),
        },
        option=orjson.OPT_NON_STR_KEYS,
    )


def geofence_consumer_name(instance: str | None = None) -> str:
    """`geofence-<instance>`; the instance defaults to `FLEET_GEOFENCE_ID`, then host name and pid."""
    return f"geofence-{instance or os.environ.get('FLEET_GEOFENCE_ID') or f'{socket.gethostname()}-{os.getpid()}'}"


def run_geofence(
    redis_url: str,
    database_url: str,
    instance: str | None = None,
    batch_entries: int = 100,
    ingest_stream: str = keys.INGEST_STREAM,
    ingest_group: str = "ingest",
) -> None:
    """Entry point for `fleet geofence`: runs until SIGINT/SIGTERM."""
    from kernel.process import stop_on_signals

    stop = stop_on_signals()
    consumer = geofence_consumer_name(instance)
    GeofenceWorker(redis_url, database_url, consumer=consumer, batch_entries=batch_entries,
                   ingest_stream=ingest_stream, ingest_group=ingest_group).run(stop)  # fmt: skip
