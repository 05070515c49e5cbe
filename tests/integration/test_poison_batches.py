"""A batch the database refuses in part, and entries that keep failing, on the real servers: the
worker stores every good record, dead-letters each bad one with the database's reason, and never
retries anything forever."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fleet_harness import STREAM, scalar, stored_counts, wait_for

from ingest.service import IngestWorker
from kernel.endpoints import Endpoints
from kernel.records import DeadLetter, Source, Telemetry
from kernel.streams import MAX_DELIVERIES, QUARANTINE_STREAM
from kernel.wire import FIELD, FORMAT, StreamEntry, encode_entry

pytestmark = pytest.mark.integration

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def _record(device_id: str, k: int, **extra: object) -> Telemetry:
    return Telemetry(device_id, BASE + timedelta(seconds=k), Source.JSON, 52.5, 13.4, **extra)  # type: ignore[arg-type]


def _entry(records: list[Telemetry], dead: list[DeadLetter] | None = None) -> dict[bytes, bytes]:
    return {FIELD: encode_entry(StreamEntry(FORMAT, records, [BASE] * len(records), dead or []))}


@contextmanager
def _worker(endpoints: Endpoints, **kwargs: object) -> Iterator[IngestWorker]:
    stop = threading.Event()
    worker = IngestWorker(endpoints.redis_url, endpoints.database_url, stream_key=STREAM, group="ingest",
                          consumer="ingest-poison", **kwargs)  # type: ignore[arg-type]  # fmt: skip
    thread = threading.Thread(target=worker.run, args=(stop,), name="ingest-poison")
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def test_a_record_the_database_refuses_is_dead_lettered_and_the_rest_stored(clean: Endpoints) -> None:
    client = redis.Redis.from_url(clean.redis_url)
    good = [_record(f"pz-{d}", k) for d in range(5) for k in range(40)]
    bad = [
        _record("pz-bad", 0, faults=("E\x00",)),  # CharacterNotInRepertoire
        Telemetry("pz-bad", BASE, Source.JSON, 52.5, None),  # a position half given: telemetry's CHECK
    ]
    client.xadd(STREAM, _entry(good[:100] + bad[:1] + good[100:150]))
    client.xadd(STREAM, _entry(good[150:] + bad[1:], [DeadLetter("fleet/x/telemetry", b"?", "bad_json", BASE)]))
    with _worker(clean) as worker:
        wait_for(lambda: worker.stats.entries == 2, 20, "both entries acknowledged")
    assert stored_counts(clean.database_url, "pz-") == (len(good), len(good))
    assert worker.stats.refused == 2
    assert scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'db_refused'") == 2
    details = scalar(clean.database_url, "SELECT string_agg(detail, ' | ' ORDER BY seq) FROM dead_letters"
                     " WHERE reason = 'db_refused'")  # fmt: skip
    assert isinstance(details, str) and "22021" in details and "23514" in details, details  # the SQLSTATEs
    assert scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'bad_json'") == 1
    assert client.xlen(STREAM) == 0
    assert client.xpending(STREAM, "ingest")["pending"] == 0
    client.close()


def test_an_entry_that_keeps_failing_is_quarantined_and_the_next_are_stored(clean: Endpoints) -> None:
    """A corrupt `device_keys` id (NUL) fails before the batch write, outside the split: the entry
    is read again alone and, after `MAX_DELIVERIES` deliveries, quarantined. The good entries read
    in the same batch are stored, none of them quarantined."""
    client = redis.Redis.from_url(clean.redis_url)
    client.xgroup_create(STREAM, "ingest", id="0", mkstream=True)
    client.xadd(STREAM, _entry([_record("qz-a", k) for k in range(10)]))
    poison_id = client.xadd(STREAM, _entry([_record("qz-\x00", 0)]))
    client.xadd(STREAM, _entry([_record("qz-b", k) for k in range(10)]))
    with _worker(clean) as worker:
        wait_for(lambda: worker.stats.quarantined == 1, 20, "the poison entry quarantined")
        wait_for(lambda: stored_counts(clean.database_url, "qz-")[0] == 20, 10, "the good entries stored")
    assert stored_counts(clean.database_url, "qz-") == (20, 20)
    (entry,) = client.xrange(QUARANTINE_STREAM)
    assert entry[1][b"id"] == poison_id and int(entry[1][b"deliveries"]) >= MAX_DELIVERIES
    assert scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'quarantined'"
                  " AND stream_entry = %s", poison_id.decode()) == 1  # fmt: skip
    assert client.xpending(STREAM, "ingest")["pending"] == 0
    client.close()
