"""An overflow of `fleet:positions` is never silent: with a tiny bound (set through the settings) and
a geofence stage that is deployed but stopped, ingest drops the oldest entries and counts exactly the
records it dropped, logs it, and /healthz reports it; without a geofence stage nothing is counted."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fleet_harness import api_client, counters, wait_for

from ingest.positions import COUNT_FIELD, GEOFENCE_GROUP
from ingest.service import IngestWorker
from kernel import keys
from kernel.endpoints import Endpoints
from kernel.records import Source, Telemetry
from kernel.settings import Settings
from kernel.wire import FIELD, FORMAT, StreamEntry, encode_entry

pytestmark = pytest.mark.integration

ENTRIES, PER_ENTRY = 60, 10
STREAM = keys.INGEST_STREAM


def _fill_ingest_stream(client: redis.Redis, prefix: str) -> None:
    """What a gateway would have written: `ENTRIES` entries of `PER_ENTRY` positions."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for e in range(ENTRIES):
        records = [
            Telemetry(f"{prefix}{e}", t0 + timedelta(seconds=k), Source.JSON, lat=52.5, lon=13.4 + k * 1e-4)
            for k in range(PER_ENTRY)
        ]
        client.xadd(STREAM, {FIELD: encode_entry(StreamEntry(FORMAT, records, [t0] * PER_ENTRY, []))})


@contextmanager
def _ingest(endpoints: Endpoints, settings: Settings) -> Iterator[IngestWorker]:
    own = endpoints.for_service("ingest")  # under its own ACL user: the script's commands are allowed
    worker = IngestWorker(own.redis_url, own.database_url, stream_key=STREAM, group="ingest", batch_entries=4,
                          positions_max_bytes=settings.positions_max_bytes)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="ingest")
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=15)


def _stored(endpoints: Endpoints) -> int:
    return counters(endpoints)["stored"]


def test_overflow_is_counted_logged_and_on_healthz(clean: Endpoints, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(positions_max_bytes=20_000)  # an entry weighs about 1 KB: about 20 entries kept
    client = redis.Redis.from_url(clean.redis_url)
    try:
        client.xgroup_create(keys.POSITIONS_STREAM, GEOFENCE_GROUP, id="0", mkstream=True)  # deployed, stopped
        _fill_ingest_stream(client, "ovf-")
        with caplog.at_level(logging.WARNING, logger="ingest.service"), _ingest(clean, settings) as worker:
            wait_for(lambda: _stored(clean) == ENTRIES * PER_ENTRY, what="every record stored")
        kept = client.xrange(keys.POSITIONS_STREAM)
        kept_records = sum(int(fields[COUNT_FIELD]) for _, fields in kept)
        assert 0 < len(kept) < ENTRIES
        seen = counters(clean)
        assert seen["positions_dropped"] == ENTRIES * PER_ENTRY - kept_records  # exactly what is gone
        assert seen["positions_dropped_entries"] == ENTRIES - len(kept)
        assert worker.stats.positions_dropped == seen["positions_dropped"]
        assert any("before the geofence stage processed them" in r.getMessage() for r in caplog.records)
        with api_client(clean) as api:
            health = api.get("/healthz").json()
        assert health["counters"]["positions_dropped"] == seen["positions_dropped"]
        assert health["positions"]["overflowed"] is True
        assert health["positions"]["dropped_records"] == seen["positions_dropped"]
        assert health["positions"]["geofence_lag_entries"] == len(kept)  # the stopped stage's backlog
    finally:
        client.close()


def test_without_a_geofence_stage_trimming_is_not_a_loss(clean: Endpoints) -> None:
    settings = Settings(positions_max_bytes=20_000)
    client = redis.Redis.from_url(clean.redis_url)
    try:
        _fill_ingest_stream(client, "nog-")
        with _ingest(clean, settings):
            wait_for(lambda: _stored(clean) == ENTRIES * PER_ENTRY, what="every record stored")
        assert client.xlen(keys.POSITIONS_STREAM) < ENTRIES  # bounded all the same
        assert counters(clean)["positions_dropped"] == 0
        with api_client(clean) as api:
            positions = api.get("/healthz").json()["positions"]
        assert positions["overflowed"] is False and positions["geofence_lag_entries"] is None
    finally:
        client.close()
