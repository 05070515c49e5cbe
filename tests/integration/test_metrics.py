"""The services' Prometheus metrics on the real servers: a gateway and an ingest worker count what
they take in, dead-letter, batch and commit, and a metrics port shows the ingest stage's lag under
the ingest service's own Redis account."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fleet_harness import device_client, publish_all, register, scalar, services, wait_for
from prometheus_client import REGISTRY

from kernel import metrics
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_services_count_what_they_take_in_and_refuse(clean: Endpoints) -> None:
    port = _free_port()
    metrics.serve(port, clean.for_service("ingest").redis_url, ["ingest"])
    before = {
        "in": _value("fleet_messages_in_total", service="gateway"),
        "records": _value("fleet_messages_in_total", service="ingest"),
        "dead": _value("fleet_dead_letters_total", service="gateway", reason="bad_json"),
        "stored_dead": _value("fleet_dead_letters_total", service="ingest", reason="bad_json"),
        "commits": _value("fleet_commit_seconds_count", service="ingest"),
    }
    creds = register(clean, ["met-1"])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    good = [orjson.dumps({"v": 1, "id": "met-1", "ts": (t0 + timedelta(seconds=i)).isoformat(), "lat": 52.5,
                          "lon": 13.4}) for i in range(5)]  # fmt: skip
    with services(clean), device_client(clean, "met-1", creds["met-1"]) as device:
        publish_all(device, [("fleet/met-1/telemetry", p) for p in good] + [("fleet/met-1/telemetry", b"{not json")])
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE device_id = 'met-1'") == 1,
                 what="the dead letter stored")  # fmt: skip
        stored_dead = before["stored_dead"]
        wait_for(lambda: _value("fleet_dead_letters_total", service="ingest", reason="bad_json") > stored_dead,
                 what="ingest counted it")  # fmt: skip
    assert _value("fleet_messages_in_total", service="gateway") - before["in"] >= 6
    assert _value("fleet_messages_in_total", service="ingest") - before["records"] >= 1
    assert _value("fleet_dead_letters_total", service="gateway", reason="bad_json") - before["dead"] == 1
    assert _value("fleet_commit_seconds_count", service="ingest") > before["commits"]
    assert _value("fleet_batch_size_count", service="gateway") > 0

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'fleet_stream_lag{stage="ingest"} 0.0' in text
    assert 'fleet_dead_letters_total{reason="bad_json",service="gateway"}' in text
    assert "fleet_reminder_outcomes" in text  # defined for the subscription service, unused yet
