"""Two gateways on the MQTT 5 shared subscription and two ingest workers on the consumer group, as
separate processes: every report the broker acknowledged is stored exactly once, and both of each
kind did part of the work. Also the intake's time rules on the real pipeline."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
import redis
from fleet_harness import (
    DeviceFeed,
    device_client,
    publish_all,
    register,
    retire_gateways,
    scalar,
    services,
    spawn_service,
    stop_service,
    stored_counts,
    wait_for,
    wait_gateway_connected,
)

from ingest.store import DeviceKeys, WritePlan, telemetry_rows, write_batch
from kernel.endpoints import Endpoints
from kernel.records import Source, Telemetry

pytestmark = pytest.mark.integration

GATEWAYS = ("sh-a", "sh-b")
WORKERS = ("sh-1", "sh-2")


def _logged(path: Path, pattern: str) -> int:
    found = re.search(pattern, path.read_text())
    assert found, f"{path.name} has no line matching {pattern!r}:\n{path.read_text()[-2000:]}"
    return int(found.group(1))


def test_two_gateways_and_two_workers_store_every_report_once(clean: Endpoints, tmp_path: Path) -> None:
    # An earlier test's in-thread gateway left its persistent session in the share group; offline,
    # it would still be handed a share of the messages. Drain it and take it out first.
    retire_gateways(clean, ["test"])
    creds = register(clean, [f"sh-{i}" for i in range(8)])
    procs = [spawn_service("ingest", clean, w, tmp_path) for w in WORKERS]
    procs += [spawn_service("gateway", clean, g, tmp_path, "--shared") for g in GATEWAYS]
    try:
        for g in GATEWAYS:
            wait_gateway_connected(tmp_path, g)
        feed = DeviceFeed(clean, creds, rate=250).start()
        try:
            time.sleep(3.0)
        finally:
            feed.stop()
        wait_for(lambda: stored_counts(clean.database_url, "sh-")[1] >= feed.accepted, 30,
                 f"{feed.accepted} reports stored")  # fmt: skip
        time.sleep(0.5)
        assert stored_counts(clean.database_url, "sh-") == (feed.accepted, feed.accepted)
    finally:
        for proc in procs:
            stop_service(proc)
        retire_gateways(clean, GATEWAYS)
    received = [_logged(tmp_path / f"gateway-{g}.log", r"stopped: (\d+) messages") for g in GATEWAYS]
    inserted = [_logged(tmp_path / f"ingest-{w}.log", r"entries, (\d+) rows inserted") for w in WORKERS]
    assert all(n > 0 for n in received), f"both gateways should get messages: {received}"
    assert sum(received) >= feed.accepted
    assert all(n > 0 for n in inserted), f"both workers should store rows: {inserted}"
    assert sum(inserted) == feed.accepted


def _report(device_id: str, t: datetime, lat: float) -> bytes:
    return orjson.dumps({"v": 1, "id": device_id, "ts": t.isoformat(), "lat": lat, "lon": 13.4})


def test_future_reports_are_refused_with_a_reason_and_late_ones_stored_in_place(clean: Endpoints) -> None:
    creds = register(clean, ["tm-1"])
    now = datetime.now(UTC).replace(microsecond=0)
    topic = "fleet/tm-1/telemetry"
    with services(clean, future_tolerance_s=60), device_client(clean, "tm-1", creds["tm-1"]) as device:
        publish_all(device, [(topic, _report("tm-1", now, 52.5))])
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM telemetry") == 1, what="current report")
        publish_all(device, [
            (topic, _report("tm-1", now + timedelta(minutes=10), 52.9)),  # beyond the tolerance
            (topic, _report("tm-1", now + timedelta(seconds=30), 52.6)),  # a fast clock, within it
            (topic, _report("tm-1", now - timedelta(hours=2), 52.1)),  # a tracker's buffered point
        ])  # fmt: skip
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM telemetry") == 3, what="3 rows")
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM dead_letters") == 1, what="dead letter")
    with psycopg.connect(clean.database_url) as conn:
        reason, payload = conn.execute("SELECT reason, payload FROM dead_letters").fetchone() or (None, None)
        times = [r[0] for r in conn.execute("SELECT time FROM telemetry ORDER BY time").fetchall()]
    assert reason == "future_time"
    assert orjson.loads(bytes(payload))["lat"] == 52.9
    assert times == [now - timedelta(hours=2), now, now + timedelta(seconds=30)]
    client = redis.Redis.from_url(clean.redis_url)
    try:
        state = orjson.loads(client.hget("fleet:vehicles", "tm-1") or b"{}")
    finally:
        client.close()
    assert state["lat"] == 52.6, "the late point must not move the vehicle back"


def test_a_replayed_batch_falls_back_to_the_merge_and_is_stored_once(clean: Endpoints) -> None:
    """The direct COPY meets rows already there (a replay after a crash between commit and XACK):
    the savepoint is rolled back, the merge stores only the new rows, and the next batches merge."""
    base = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    keys = DeviceKeys()

    def rows(first: int, last: int) -> list[tuple[object, ...]]:
        records = [Telemetry("rp-1", base + timedelta(seconds=k), Source.JSON, 52.5, 13.4) for k in range(first, last)]
        return telemetry_rows(records, [base] * len(records), keys.keys_for(conn, records))

    plan = WritePlan()
    with psycopg.connect(clean.database_url) as conn:
        first = write_batch(conn, rows(0, 100), [], plan)
        assert (first.inserted, first.merged) == (100, False)
        replay = write_batch(conn, rows(50, 150) + rows(140, 150), [], plan)  # 50 old, 10 resent in-batch
        assert (replay.staged, replay.inserted, replay.duplicates, replay.merged) == (110, 50, 60, True)
        assert plan.use_merge()
        after = write_batch(conn, rows(150, 160), [], plan)
        assert (after.inserted, after.merged) == (10, True)
    assert scalar(clean.database_url, "SELECT count(*) FROM telemetry") == 160
    assert scalar(clean.database_url, "SELECT count(DISTINCT time) FROM telemetry") == 160


def test_a_record_twice_in_one_batch_is_stored_once(clean: Endpoints) -> None:
    """A QoS 1 redelivery can land in the same batch as the original: the direct COPY refuses the
    batch, the merge stores each (device, time) once."""
    base = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    records = [Telemetry("rp-2", base + timedelta(seconds=k), Source.JSON, 52.5, 13.4) for k in (0, 1, 2, 1, 3, 0)]
    plan = WritePlan()
    with psycopg.connect(clean.database_url) as conn:
        rows = telemetry_rows(records, [base] * len(records), DeviceKeys().keys_for(conn, records))
        result = write_batch(conn, rows, [], plan)
    assert (result.staged, result.inserted, result.duplicates, result.merged) == (6, 4, 2, True)
    assert scalar(clean.database_url, "SELECT count(*) FROM telemetry WHERE device_id = 'rp-2'") == 4
