"""Hostile input through the whole pipeline: real broker, gateway, Redis stream, ingest, PostgreSQL.

Generated payloads (odd strings, extreme numbers, duplicate keys, deep nesting, binary, huge
batches, oversize) on every device topic, interleaved with good records from other devices. At the
end every service still runs, every good record is stored exactly once, and the hostile device's
messages became exactly what the gateway's pure intake says (tests/integration/hostile.py): its
records stored once each, one dead letter per reason per message, nothing refused by the database.
The long run is `fleet bench hostile`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fleet_harness import (
    Running,
    counters,
    device_client,
    ingest_backlog,
    publish_all,
    register,
    scalar,
    services,
    wait_for,
)
from hostile import expect, messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

GOOD = ("hg-good-1", "hg-good-2")
EXAMPLES = 6
_serial = itertools.count()


@pytest.fixture(scope="module")
def pipeline(endpoints: Endpoints) -> Iterator[tuple[Endpoints, Running, dict[str, str]]]:
    from conftest import refuse_foreign_wipe

    refuse_foreign_wipe(endpoints)
    credentials = register(endpoints, list(GOOD))
    with services(endpoints) as running:
        yield endpoints, running, credentials


def _good(device_id: str, k: int, base: datetime) -> tuple[str, bytes]:
    body = {"v": 1, "ts": (base + timedelta(milliseconds=k)).isoformat(), "lat": 52.5, "lon": 13.4}
    return f"fleet/{device_id}/telemetry", orjson.dumps(body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(data=st.data())
def test_hostile_input_changes_nothing_but_its_own_dead_letters(
    pipeline: tuple[Endpoints, Running, dict[str, str]], data: st.DataObject
) -> None:
    endpoints, running, good_credentials = pipeline
    now = datetime.now(UTC)
    device = f"hg-bad-{next(_serial)}-{now.microsecond}"
    password = register(endpoints, [device])[device]  # published to at once: known from registration on
    sent = data.draw(messages(device, now))
    oracle = expect(device, sent, now)
    assert not oracle.unaccounted, f"the intake accounts for no outcome of {oracle.unaccounted[:3]}"

    base = now - timedelta(hours=2) + timedelta(seconds=next(_serial))
    received_before = counters(endpoints)["received"]
    good_sent = 0
    with device_client(endpoints, device, password) as bad, \
         device_client(endpoints, GOOD[0], good_credentials[GOOD[0]]) as good_a, \
         device_client(endpoints, GOOD[1], good_credentials[GOOD[1]]) as good_b:  # fmt: skip
        for i, message in enumerate(sent):  # good records from others between every hostile message
            publish_all(good_a, [_good(GOOD[0], i, base)])
            publish_all(bad, [message])
            publish_all(good_b, [_good(GOOD[1], i, base)])
            good_sent += 2
    total = len(sent) + good_sent
    wait_for(lambda: counters(endpoints)["received"] - received_before >= total, 30, "every message at the gateway")

    def stored(device_id: str, since: datetime | None = None) -> int:
        sql = "SELECT count(*) FROM telemetry WHERE device_id = %s" + (" AND time >= %s" if since else "")
        return int(scalar(endpoints.database_url, sql, device_id, *([since] if since else [])))  # type: ignore[arg-type]

    def letters() -> int:
        return int(scalar(endpoints.database_url, "SELECT count(*) FROM dead_letters WHERE device_id = %s", device))  # type: ignore[arg-type]

    wait_for(lambda: stored(device) >= len(oracle.times) and letters() >= oracle.letters
             and all(stored(g, base) >= len(sent) for g in GOOD), 30, "the pipeline caught up")  # fmt: skip
    wait_for(lambda: not ingest_backlog(endpoints), 30, "the stream drained")

    assert all(t.is_alive() for t in running.threads), "a service stopped"
    assert running.gateway.wait_connected(5)
    assert stored(device) == len(oracle.times)  # each record once, repeats folded
    assert letters() == oracle.letters  # one per reason per message, nothing the database refused
    refused = scalar(endpoints.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'db_refused'")
    assert refused == 0, "a decoder passed something the database refuses"
    for g in GOOD:  # every good record exactly once
        assert stored(g, base) == len(sent)
        sql = "SELECT count(DISTINCT time) FROM telemetry WHERE device_id = %s AND time >= %s"
        distinct = scalar(endpoints.database_url, sql, g, base)
        assert distinct == len(sent)
