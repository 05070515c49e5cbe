"""Running the real services in threads of the test process, against the session's servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from gateway.broker_admin import BrokerAdmin
from gateway.config import Endpoints
from gateway.registry import DeviceRegistry, DeviceSpec
from gateway.service import Gateway
from gateway.settings import MqttTarget
from ingest.service import IngestWorker

STREAM = "fleet:ingest"


@dataclass
class Running:
    gateway: Gateway
    ingest: IngestWorker


@contextmanager
def services(endpoints: Endpoints, *, future_tolerance_s: float = 300.0) -> Iterator[Running]:
    """A gateway and an ingest worker in threads; stopped and joined on exit."""
    stop = threading.Event()
    gateway = Gateway(
        MqttTarget.parse(endpoints.mqtt_url),
        endpoints.redis_url,
        stream_key=STREAM,
        max_payload=16384,
        future_tolerance_s=future_tolerance_s,
        client_id="fleet-gateway-test",
    )
    worker = IngestWorker(endpoints.redis_url, endpoints.database_url, stream_key=STREAM, group="ingest")
    threads = [
        threading.Thread(target=gateway.run, args=(stop,), name="gateway"),
        threading.Thread(target=worker.run, args=(stop,), name="ingest"),
    ]
    for thread in threads:
        thread.start()
    try:
        assert gateway.wait_connected(10), "gateway did not connect to the broker"
        time.sleep(0.2)  # subscription acknowledged
        yield Running(gateway, worker)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


def register(endpoints: Endpoints, ids: Sequence[str]) -> dict[str, str]:
    assert endpoints.mqtt_admin_url
    registry = DeviceRegistry(endpoints.database_url, endpoints.redis_url, BrokerAdmin(endpoints.mqtt_admin_url))
    try:
        return {c.device_id: c.password for c in registry.register([DeviceSpec(i) for i in ids])}
    finally:
        registry.close()


@contextmanager
def device_client(endpoints: Endpoints, device_id: str, password: str) -> Iterator[mqtt.Client]:
    target = MqttTarget.parse(endpoints.mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, password)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(target.host, target.port)
    client.loop_start()
    try:
        assert connected.wait(10), f"device {device_id} could not connect"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(client: mqtt.Client, messages: Sequence[tuple[str, bytes]], qos: int = 1) -> None:
    infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def scalar(database_url: str, sql: str, *params: object) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None
