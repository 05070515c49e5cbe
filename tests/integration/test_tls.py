"""MQTT over TLS on the real broker: a stock client (`mosquitto_pub --cafile`), our gateway, the
simulated fleet, the load publisher and the admin client all connect to the stack's TLS listener, and
what devices publish is stored. With the plain listener turned off, only TLS answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from fleet_harness import device_client, publish_all, register, scalar, services, stored_counts, wait_for

from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget
from localstack import free_ports, procs
from localstack.install import find_binaries
from localstack.model import StackSecrets
from localstack.mosquitto import Mosquitto, connack_code
from simulators.config import SimConfig, device_ids
from simulators.fleet import run_fleet
from simulators.load import run_load

pytestmark = pytest.mark.integration


def test_mosquitto_pub_over_tls_reaches_the_gateway_and_the_record_is_stored(tls_endpoints: Endpoints) -> None:
    device = "tls-pub-1"
    password = register(tls_endpoints, [device])[device]  # the admin client over TLS too
    target = MqttTarget.parse(tls_endpoints.mqtt_url)
    assert target.tls and target.ca_file and Path(target.ca_file).exists()
    ts = int(time.time()) - 5
    record = orjson.dumps({"v": 1, "ts": ts, "lat": 52.52, "lon": 13.405, "spd": 3.5})
    with services(tls_endpoints) as running:  # the gateway's own session over TLS
        result = subprocess.run(
            ["mosquitto_pub", "-h", target.host, "-p", str(target.port), "--cafile", target.ca_file,
             "-u", device, "-P", password, "-i", device, "-q", "1", "-t", f"fleet/{device}/telemetry",
             "-m", record.decode()],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_for(lambda: stored_counts(tls_endpoints.database_url, device)[0] == 1, what="the TLS record stored")
        with device_client(tls_endpoints, device, password) as paho_device:  # paho over TLS, as firmware might
            publish_all(
                paho_device,
                [(f"fleet/{device}/telemetry", orjson.dumps({"v": 1, "ts": ts + 1, "lat": 52.5, "lon": 13.4}))],
            )
        wait_for(lambda: stored_counts(tls_endpoints.database_url, device)[0] == 2, what="the paho record stored")
        assert running.gateway.stats.connects >= 1
    stored = scalar(tls_endpoints.database_url, "SELECT min(time) FROM telemetry WHERE device_id = %s", device)
    assert stored == datetime.fromtimestamp(ts, UTC)


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_endpoints: Endpoints) -> None:
    target = MqttTarget.parse(tls_endpoints.mqtt_url)
    result = subprocess.run(
        ["mosquitto_pub", "-h", target.host, "-p", str(target.port), "--cafile", "/etc/ssl/certs/ca-certificates.crt",
         "-u", target.username or "", "-P", target.password or "", "-t", "fleet/x/telemetry", "-m", "x"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode != 0 and "TLS" in result.stderr


def test_the_simulated_fleet_and_the_load_publisher_over_tls(tls_endpoints: Endpoints) -> None:
    config = SimConfig(devices=4, rate=4.0, fmt="json", seed=3, duration_s=3.0, count=None, id_prefix="tls-sim-")
    credentials = register(tls_endpoints, device_ids(config))
    target = MqttTarget.parse(tls_endpoints.mqtt_url)
    with services(tls_endpoints):
        summary = asyncio.run(
            run_fleet(config, mqtt_host=target.host, mqtt_port=target.port, credentials=credentials,
                      tls=target.ssl_context())
        )  # fmt: skip
        assert summary.stored_records > 0
        wait_for(
            lambda: stored_counts(tls_endpoints.database_url, "tls-sim-")[0] == summary.stored_records,
            what=f"{summary.stored_records} simulated records stored",
        )
    load = run_load(target.host, target.port, target.username, target.password, total=2000, rate=0, devices=4,
                    fmt="json", batch=10, id_prefix="tls-load-", tls=True, ca_file=target.ca_file)  # fmt: skip
    assert (load.messages, load.acked) == (200, 200)


def test_with_the_plain_listener_off_only_tls_answers(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # the broker drops root's privileges and must reach its folder
    ports = free_ports()
    (tmp_path / "run").mkdir()
    (tmp_path / "logs").mkdir()
    credentials = StackSecrets.generate()
    broker = Mosquitto(tmp_path, ports.mqtt, find_binaries(), credentials, tls_port=ports.mqtts, plain=False)
    broker.start(lambda _m: None)
    try:
        record = procs.ProcessRecord.load(broker.record_path)
        assert record is not None
        assert connack_code(ports.mqtt, "fleet-service", credentials.mqtt_service) is None  # nobody listens
        mqtts = f"mqtts://fleet-service:{credentials.mqtt_service}@127.0.0.1:{ports.mqtts}"
        target = MqttTarget.parse(mqtts, default_ca_file=str(broker.tls.ca_cert))
        assert connack_code(ports.mqtts, "fleet-service", credentials.mqtt_service, tls=target.ssl_context()) == 0
    finally:
        record = procs.ProcessRecord.load(broker.record_path)
        if record is not None:
            procs.stop(record, broker.stop_signal)
