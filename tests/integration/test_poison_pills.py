"""Poison pills and floods through the real broker, gateway and ingest (each its own process, as in
production): the NUL fault code that once halted ingest for every device, JSON nested a thousand
levels deep that once killed the gateway, and the `$` amplifier that once made 8,000 dead letters of
one message. Each time the services keep running, the good records around the bad input are stored,
and the bad input leaves one bounded dead letter with its reason."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import orjson
import psycopg
import pytest
import redis
from fleet_harness import (
    device_client,
    publish_all,
    register,
    retire_gateways,
    spawn_service,
    stop_service,
    stored_counts,
    wait_for,
    wait_gateway_connected,
)

from kernel import keys
from kernel.deadletters import MAX_PAYLOAD, PER_MINUTE
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(clean: Endpoints, tmp_path: Path) -> Iterator[tuple[Endpoints, str, Path]]:
    """`fleet gateway` and `fleet ingest` processes; at the end, both must still be running."""
    # An earlier test's in-thread gateway may have left its persistent session in the share group;
    # offline, it would still be handed a share of the messages. Drain it and take it out first.
    retire_gateways(clean, ["test"])
    prefix = f"pp{uuid4().hex[:6]}-"
    instance = prefix + "gw"
    register(clean, [prefix + name for name in ("bad", "good-1", "good-2")])  # known before the gateway starts
    gateway = spawn_service("gateway", clean, instance, tmp_path)
    ingest = spawn_service("ingest", clean, prefix + "in", tmp_path)
    try:
        wait_gateway_connected(tmp_path, instance)
        yield clean, prefix, tmp_path
        assert gateway.poll() is None, (tmp_path / f"gateway-{instance}.log").read_text()[-3000:]
        assert ingest.poll() is None, (tmp_path / f"ingest-{prefix}in.log").read_text()[-3000:]
    finally:
        stop_service(gateway)
        stop_service(ingest)
        retire_gateways(clean, [instance])


def _report(when: datetime, **extra: object) -> bytes:
    return orjson.dumps({"v": 1, "ts": when.isoformat(), "lat": 52.5, "lon": 13.4, "fix": 3, **extra})


def _dead_letters(database_url: str, prefix: str) -> list[tuple[str, str, int, int, int, bytes, bytes]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(  # type: ignore[return-value]
            "SELECT topic, reason, count, size, length(payload), sha256, payload FROM dead_letters"
            " WHERE device_id LIKE %s ORDER BY received_at, seq",
            (prefix + "%",),
        ).fetchall()


def _credentials(endpoints: Endpoints, prefix: str) -> dict[str, str]:
    """Fresh passwords for the test's devices (registration hands them out once; re-registering
    an id gives a new one)."""
    return register(endpoints, [prefix + name for name in ("bad", "good-1", "good-2")])


def test_a_nul_fault_code_is_one_dead_letter_and_ingest_goes_on(pipeline: tuple[Endpoints, str, Path]) -> None:
    endpoints, prefix, _logs = pipeline
    creds = _credentials(endpoints, prefix)
    base = datetime.now(UTC) - timedelta(minutes=1)
    bad, good = prefix + "bad", prefix + "good-1"
    with device_client(endpoints, bad, creds[bad]) as dev, device_client(endpoints, good, creds[good]) as other:
        publish_all(dev, [(f"fleet/{bad}/telemetry", _report(base + timedelta(seconds=i), faults=[f"E{i}"]))
                          for i in range(3)])  # fmt: skip
        publish_all(dev, [(f"fleet/{bad}/telemetry", _report(base + timedelta(seconds=3), faults=["E\u0000"]))])
        publish_all(other, [(f"fleet/{good}/telemetry", _report(base + timedelta(seconds=i))) for i in range(5)])
        publish_all(dev, [(f"fleet/{bad}/telemetry", _report(base + timedelta(seconds=4), faults=["E4"]))])
        wait_for(lambda: stored_counts(endpoints.database_url, prefix)[0] >= 9, 20, "the good records stored")
        # ingest is still storing, not just alive: a record published afterwards arrives too
        publish_all(other, [(f"fleet/{good}/telemetry", _report(base + timedelta(seconds=10)))])
        wait_for(lambda: stored_counts(endpoints.database_url, prefix)[0] >= 10, 20, "a later record stored")
    assert stored_counts(endpoints.database_url, prefix) == (10, 10)
    [(topic, reason, count, size, _len, _sha, payload)] = _dead_letters(endpoints.database_url, prefix)
    assert (topic, reason, count) == (f"fleet/{bad}/telemetry", "bad_string", 1)
    assert b"E\\u0000" in payload and size == len(payload)


@pytest.mark.parametrize("levels", [1000])
def test_deep_nesting_on_every_json_topic_is_one_dead_letter_each_and_the_gateway_goes_on(
    pipeline: tuple[Endpoints, str, Path], levels: int
) -> None:
    endpoints, prefix, _logs = pipeline
    creds = _credentials(endpoints, prefix)
    bad, good = prefix + "bad", prefix + "good-1"
    nest = b"[" * levels + b"]" * levels
    base = datetime.now(UTC) - timedelta(minutes=1)
    hostile = [
        (
            f"fleet/{bad}/telemetry",
            b'{"v":1,"ts":"' + base.isoformat().encode() + b'","lat":1,"lon":1,"x":' + nest + b"}",
        ),
        (f"owntracks/{bad}/phone", b'{"_type":"location","lat":1,"lon":1,"tst":1,"x":' + nest + b"}"),
        (f"fleet/{bad}/cmd/ack", b'{"id":"' + str(uuid4()).encode() + b'","status":"ok","x":' + nest + b"}"),
    ]
    with device_client(endpoints, bad, creds[bad]) as dev, device_client(endpoints, good, creds[good]) as other:
        publish_all(other, [(f"fleet/{good}/telemetry", _report(base + timedelta(seconds=i))) for i in range(3)])
        publish_all(dev, hostile)
        publish_all(other, [(f"fleet/{good}/telemetry", _report(base + timedelta(seconds=i))) for i in range(3, 6)])
        wait_for(lambda: len(_dead_letters(endpoints.database_url, prefix)) >= 3, 20, "three dead letters")
        wait_for(lambda: stored_counts(endpoints.database_url, prefix)[0] >= 6, 20, "the good records stored")
    letters = _dead_letters(endpoints.database_url, prefix)
    assert sorted((t, r, c) for t, r, c, *_ in letters) == sorted((t, "too_deep", 1) for t, _ in hostile)
    assert stored_counts(endpoints.database_url, prefix) == (6, 6)


def test_the_dollar_amplifier_is_one_dead_letter_with_a_count_and_others_are_unaffected(
    pipeline: tuple[Endpoints, str, Path],
) -> None:
    endpoints, prefix, _logs = pipeline
    creds = _credentials(endpoints, prefix)
    bad, good1, good2 = prefix + "bad", prefix + "good-1", prefix + "good-2"
    flood = b"$\n" * 8000  # 16,000 bytes, under the 16 KiB limit: 8,000 lines that are not NMEA
    floods = PER_MINUTE + 20  # past the device's dead-letter budget
    base = datetime.now(UTC) - timedelta(minutes=5)
    with (
        device_client(endpoints, bad, creds[bad]) as dev,
        device_client(endpoints, good1, creds[good1]) as one,
        device_client(endpoints, good2, creds[good2]) as two,
    ):
        for k in range(floods):
            dev.publish(f"fleet/{bad}/nmea", flood, qos=1)
            for client, device in ((one, good1), (two, good2)):
                client.publish(f"fleet/{device}/telemetry", _report(base + timedelta(seconds=k)), qos=1)
        publish_all(dev, [])
        wait_for(lambda: stored_counts(endpoints.database_url, prefix)[0] >= 2 * floods, 30, "every good record")
        wait_for(lambda: len(_dead_letters(endpoints.database_url, prefix)) >= PER_MINUTE, 30, "the dead letters")
    assert stored_counts(endpoints.database_url, prefix) == (2 * floods, 2 * floods)
    letters = _dead_letters(endpoints.database_url, prefix)
    assert len(letters) == PER_MINUTE  # the rest counted, not stored
    joined = b"\n".join([b"$"] * 8000)
    for topic, reason, count, size, length, sha, _payload in letters:
        assert (topic, reason, count, size, length) == (
            f"fleet/{bad}/nmea",
            "bad_schema",
            8000,
            len(joined),
            MAX_PAYLOAD,
        )
        assert sha == hashlib.sha256(joined).digest()
    counters = redis.Redis.from_url(endpoints.redis_url)
    try:
        dropped = counters.hget(keys.COUNTERS, "dead_dropped:bad_schema")
    finally:
        counters.close()
    assert int(dropped or 0) == floods - PER_MINUTE
