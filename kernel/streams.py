"""Redis connections for the services that move stream entries, and their consumer-group reads.

redis-py packs commands with hiredis when it is installed, and hiredis copies every argument into
one buffer at a cost that grows faster than the size: measured here, 7 µs for a 60 KB value but
1 ms for 600 KB and 13 ms for 6 MB, which is what one gateway batch (5,000 messages of 10 records)
weighs. The pure-Python packer sends a value over its buffer cutoff as a separate chunk, uncopied,
in about 4 µs whatever its size. Replies are still parsed by hiredis.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import redis
from redis.connection import Encoder, PythonRespSerializer

from kernel import keys
from kernel.wire import FIELD, RECORD_BYTES

log = logging.getLogger(__name__)

BUFFER_CUTOFF = 6000  # redis-py's own default: smaller values are joined into the command buffer


def stream_client(url: str) -> redis.Redis:
    encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)
    return redis.Redis.from_url(url, command_packer=PythonRespSerializer(BUFFER_CUTOFF, encoder.encode))


Entries = list[tuple[bytes, dict[bytes, bytes]]]

QUARANTINE_STREAM = keys.QUARANTINE_STREAM
MAX_DELIVERIES = 5
"""An entry delivered this often without being acknowledged goes to the quarantine instead of a sixth
try. A batch that failed is re-read one entry at a time (see `GroupReader`), so only an entry that
fails alone climbs past 3 deliveries; the good entries that shared a batch with it never do."""
QUARANTINE_MAX_LEN = 100_000  # entries the quarantine stream keeps (approximately)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A pending entry that was delivered `deliveries` times and never acknowledged."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int


@dataclass(slots=True)
class Read:
    entries: Entries = dataclass_field(default_factory=list)
    quarantine: list[Quarantined] = dataclass_field(default_factory=list)


class GroupReader:
    """One consumer's reads of a stream through its consumer group, so that no entry is lost to a
    crash and none is tried forever.

    Order of reads: first the entries this consumer name read before and never acknowledged (a
    restarted worker takes its own back at once), then, checked every `claim_check_s` at most,
    entries another consumer has left pending for `claim_idle_ms` (it died, and may never come back),
    then new ones. Entries read again are looked at first (XPENDING, which does not count as a
    delivery): one delivered `MAX_DELIVERIES` times is handed back as `Read.quarantine` instead (the
    worker stores it as a dead letter and calls `quarantine`), and while any has been delivered more
    than once, they are taken one at a time, so a crashing entry is singled out.
    """

    def __init__(
        self, client: redis.Redis, stream: str, group: str, consumer: str, *, count: int, block_ms: int,
        claim_idle_ms: int, claim_check_s: float, max_deliveries: int = MAX_DELIVERIES,
    ) -> None:  # fmt: skip
        self._redis = client
        self._stream = stream
        self._group = group
        self.consumer = consumer
        self._count = count
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._claim_check_s = min(claim_check_s, claim_idle_ms / 3000)  # a short idle time is checked often
        self._max_deliveries = max_deliveries
        self._own_pending = True
        self._claim_due = 0.0
        self.claimed = 0  # entries taken over from other consumers
        self.quarantined = 0

    @property
    def stream(self) -> str:
        return self._stream

    def ensure_group(self) -> bool:
        """Create the group (and the stream) unless it exists; True, so a retry loop can tell done."""
        try:
            self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return True

    def retry_pending(self) -> None:
        """Processing the last read failed: read this consumer's pending entries again next."""
        self._own_pending = True

    def read(self) -> Read:
        if self._own_pending:
            pending = self._redis.xpending_range(
                self._stream, self._group, "-", "+", self._count, consumername=self.consumer
            )
            if pending:
                return self._again(pending, own=True)
            self._own_pending = False
        if time.monotonic() >= self._claim_due:
            idle = self._redis.xpending_range(
                self._stream, self._group, "-", "+", self._count, idle=self._claim_idle_ms
            )
            idle = [p for p in idle if p["consumer"] != self.consumer.encode()]
            if idle:
                got = self._again(idle, own=False)
                if got.entries:
                    self.claimed += len(got.entries)
                    log.info("%s took over %d entries idle for %d ms", self.consumer, len(got.entries),
                             self._claim_idle_ms)  # fmt: skip
                if got.entries or got.quarantine:
                    return got
            self._claim_due = time.monotonic() + self._claim_check_s
        reply = self._redis.xreadgroup(
            self._group, self.consumer, {self._stream: ">"}, count=self._count, block=self._block_ms
        )
        return Read(reply[0][1] if reply else [])

    def _again(self, pending: list[dict[str, Any]], *, own: bool) -> Read:
        """Entries delivered before: quarantine the worn-out ones, else take them (one if suspect)."""
        worn = [p for p in pending if p["times_delivered"] >= self._max_deliveries]
        if worn:
            return Read(quarantine=self._fetch(worn))
        if any(p["times_delivered"] > 1 for p in pending):
            pending = pending[:1]
        ids = [p["message_id"] for p in pending]
        if own:
            reply = self._redis.xreadgroup(self._group, self.consumer, {self._stream: "0"}, count=len(ids))
            return Read(reply[0][1] if reply else [])
        claimed = self._redis.xclaim(self._stream, self._group, self.consumer, self._claim_idle_ms, ids)
        return Read([(eid, fields or {}) for eid, fields in claimed])

    def _fetch(self, worn: list[dict[str, Any]]) -> list[Quarantined]:
        pipe = self._redis.pipeline(transaction=False)
        for p in worn:
            pipe.xrange(self._stream, p["message_id"], p["message_id"], count=1)
        found = pipe.execute()
        return [
            Quarantined(p["message_id"], rows[0][1] if rows else {}, int(p["times_delivered"]))
            for p, rows in zip(worn, found, strict=True)
        ]

    def quarantine(self, entries: list[Quarantined], *, reason: str) -> None:
        """Move entries to the quarantine stream and acknowledge them, in one transaction. The
        caller has stored their dead letters first (a crash in between stores them twice at worst:
        dead letters are keyed by stream entry)."""
        pipe = self._redis.pipeline(transaction=True)
        for q in entries:
            pipe.xadd(
                QUARANTINE_STREAM,
                {b"stream": self._stream, b"group": self._group, b"id": q.entry_id, b"deliveries": q.deliveries,
                 b"reason": reason, **{b"f:" + k: v for k, v in q.fields.items()}},
                maxlen=QUARANTINE_MAX_LEN, approximate=True,
            )  # fmt: skip
        ids = [q.entry_id for q in entries]
        pipe.xack(self._stream, self._group, *ids)
        pipe.xdel(self._stream, *ids)
        pipe.hincrby(keys.COUNTERS, "quarantined", len(entries))
        pipe.execute()
        self.quarantined += len(entries)
        log.warning("%s quarantined %d entries of %s (%s)", self.consumer, len(entries), self._stream, reason)


def split_entries(entries: Entries, max_rows: int) -> tuple[Entries, Entries]:
    """A prefix of whole entries of at most about `max_rows` records (at least one entry), and the rest:
    ingest and geofence process a large read in parts, so one transaction (and the memory and time
    between two acknowledgements) stays bounded.

    Sizes are estimated from the encoded length (`RECORD_BYTES` a record), so nothing is decoded twice.
    """
    budget = max_rows * RECORD_BYTES
    for i, (_id, fields) in enumerate(entries):
        budget -= len(fields.get(FIELD, b"")) if fields else 0
        if budget < 0 and i > 0:
            return entries[:i], entries[i:]
    return entries, []
