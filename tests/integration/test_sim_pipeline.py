"""A simulated fleet with every fault switched on, through the real broker, gateway and ingest:
the store holds exactly what the run's ledger says, and each fault lands as its own dead letter."""

from __future__ import annotations

import asyncio
from collections import Counter

import psycopg
import pytest
from fleet_harness import register, scalar, services, stored_counts, wait_for

from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget
from simulators.config import SimConfig, device_ids
from simulators.faults import FaultConfig
from simulators.fleet import run_fleet

pytestmark = pytest.mark.integration

# Only this run's devices: an earlier test's stragglers (a Last Will queued for the gateway's
# persistent session) must not change the counts.
PREFIX = "e2e-"


def _dead_letters(database_url: str) -> Counter[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT reason, count(*) FROM dead_letters WHERE device_id LIKE %s GROUP BY reason", (PREFIX + "%",)
        ).fetchall()
    return Counter(dict(rows))


def test_every_fault_kind_is_stored_once_or_dead_lettered_with_its_reason(clean: Endpoints) -> None:
    config = SimConfig(
        devices=32, rate=2.0, fmt="mixed", seed=7, duration_s=12.0, count=None,
        faults=FaultConfig.parse("all=0.3"), id_prefix=PREFIX,
    )  # fmt: skip
    credentials = register(clean, device_ids(config))
    target = MqttTarget.parse(clean.mqtt_url)
    with services(clean):
        summary = asyncio.run(run_fleet(config, mqtt_host=target.host, mqtt_port=target.port, credentials=credentials))
        expected_dead = Counter({k: v for k, v in summary.rejects.items() if k != "acl_denied"})
        wait_for(
            lambda: (
                stored_counts(clean.database_url, PREFIX)[0] == summary.stored_records
                and _dead_letters(clean.database_url) == expected_dead
            ),
            timeout=30,
            what=f"{summary.stored_records} rows and dead letters {dict(expected_dead)}",
        )
    assert summary.messages >= 80
    assert summary.duplicates > 0, "the run should have exercised duplicates"
    assert set(expected_dead) == {
        "bad_json", "bad_checksum", "out_of_range", "not_finite", "oversize", "id_mismatch", "future_time"
    }  # fmt: skip
    assert summary.acl_denied > 0
    assert summary.faults.get("out_of_order", 0) > 0
    assert stored_counts(clean.database_url, PREFIX)[1] == summary.stored_records
    # A device publishing on another device's topic never reaches the gateway: the broker refuses it.
    assert scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'unknown_device'") == 0
