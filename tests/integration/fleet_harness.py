"""Running the real services in threads of the test process, against the session's servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from api import keystore
from api.app import create_app
from api.deps import ApiConfig
from api.keys import Role
from gateway import decoders
from gateway.decoders import Decoded
from gateway.service import Gateway, gateway_client_id
from ingest.service import IngestWorker
from ingest.store import stored_counts  # noqa: F401 - the fault tests import it from here
from kernel import keys
from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget
from provisioning.broker_admin import BrokerAdmin
from provisioning.registry import DeviceRegistry, DeviceSpec

STREAM = "fleet:ingest"


@dataclass
class Running:
    gateway: Gateway
    ingest: IngestWorker
    threads: list[threading.Thread] = field(default_factory=list)


@contextmanager
def services(
    endpoints: Endpoints, *, future_tolerance_s: float = 300.0, decode: Callable[..., Decoded] = decoders.decode
) -> Iterator[Running]:
    """A gateway (with `decode`, so a test can break it) and an ingest worker in threads, each under
    its own accounts; stopped and joined on exit."""
    stop = threading.Event()
    as_gateway, as_ingest = endpoints.for_service("gateway"), endpoints.for_service("ingest")
    gateway = Gateway(
        MqttTarget.parse(as_gateway.mqtt_url),
        as_gateway.redis_url,
        stream_key=STREAM,
        max_payload=16384,
        future_tolerance_s=future_tolerance_s,
        client_id="fleet-gateway-test",
        decode=decode,
    )
    worker = IngestWorker(as_ingest.redis_url, as_ingest.database_url, stream_key=STREAM, group="ingest")
    threads = [
        threading.Thread(target=gateway.run, args=(stop,), name="gateway"),
        threading.Thread(target=worker.run, args=(stop,), name="ingest"),
    ]
    for thread in threads:
        thread.start()
    try:
        assert gateway.wait_connected(10), "gateway did not connect to the broker"
        time.sleep(0.2)  # subscription acknowledged
        yield Running(gateway, worker, threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        # A persistent session left subscribed would queue every later test's messages while away.
        retire_gateways(endpoints, ["test"])


def api_config(endpoints: Endpoints) -> ApiConfig:
    """The API as `fleet api` runs it: under its own database role and Redis user."""
    own = endpoints.for_service("api")
    return ApiConfig(own.database_url, own.redis_url, own.mqtt_admin_url)


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
    if (context := target.ssl_context()) is not None:
        client.tls_set_context(context)
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


def counters(endpoints: Endpoints) -> Counter[str]:
    """The pipeline's counters (`fleet:counters`), as /healthz shows them."""
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        return Counter({k.decode(): int(v) for k, v in client.hgetall(keys.COUNTERS).items()})
    finally:
        client.close()


def ingest_backlog(endpoints: Endpoints) -> int:
    """Stream entries not yet stored: still in `fleet:ingest` or read and not acknowledged."""
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        waiting = int(client.xlen(STREAM))
        try:
            return waiting + int(client.xpending(STREAM, "ingest")["pending"])
        except redis.ResponseError:  # no consumer group yet: nothing read
            return waiting
    finally:
        client.close()


def scalar(database_url: str, sql: str, *params: object) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


# -- services as separate processes, devices that keep publishing (reliability tests) ----------------
# service → (its `fleet` command, the variable that names its instance)
SERVICE_COMMANDS = {"gateway": (["gateway"], "FLEET_GATEWAY_ID"), "ingest": (["ingest"], "FLEET_INGEST_ID"),
                    "commands": (["commands", "serve"], "FLEET_COMMANDS_ID"),
                    "lockout": (["lockout"], "FLEET_LOCKOUT_ID")}  # fmt: skip


def spawn_service(
    role: str, endpoints: Endpoints, instance: str, log_dir: Path, *args: str, env: Mapping[str, str] = {}
) -> subprocess.Popen[bytes]:
    """`fleet gateway`, `fleet ingest` or `fleet commands serve` (with `args`, and `env` added to its
    own accounts) as its own process, so a test can kill -9 it."""
    command, variable = SERVICE_COMMANDS[role]
    child_env = {**endpoints.service_env(role, os.environ), **env, variable: instance}
    with (log_dir / f"{role}-{instance}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", *command, *args], env=child_env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_gateway_connected(log_dir: Path, instance: str, times: int = 1, timeout: float = 15.0) -> None:
    path = log_dir / f"gateway-{instance}.log"
    wait_for(lambda: path.exists() and path.read_text().count("connected (session") >= times, timeout,
             f"gateway {instance} connected")  # fmt: skip


def stop_service(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args} did not stop on SIGTERM") from None


def retire_gateways(endpoints: Endpoints, instances: Sequence[str]) -> None:
    """Remove gateway sessions from the broker: a persistent session left behind would keep taking a
    share of the shared subscription's messages away from later tests."""
    as_gateway = endpoints.for_service("gateway")
    for instance in instances:
        gateway = Gateway(MqttTarget.parse(as_gateway.mqtt_url), as_gateway.redis_url, stream_key=STREAM,
                          max_payload=16384, future_tolerance_s=300, client_id=gateway_client_id(instance))  # fmt: skip
        assert gateway.retire(threading.Event(), quiet_s=0.3), f"could not retire gateway {instance}"


@dataclass
class DeviceFeed:
    """Devices publishing numbered reports at QoS 1 from a thread; `accepted` counts the broker's PUBACKs.

    Each report has its own device time (a hour ago plus 10 ms per report), so every accepted report
    must end up as exactly one row. paho reconnects by itself and sends again what was not
    acknowledged, as a device's firmware would.
    """

    endpoints: Endpoints
    credentials: dict[str, str]
    rate: float  # messages per second per device
    reconnect_s: float = 1.0  # first reconnect delay: paho's default, as firmware; small = back at once
    base: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    published: int = 0
    accepted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clients: list[tuple[str, mqtt.Client]] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> DeviceFeed:
        target = MqttTarget.parse(self.endpoints.mqtt_url)
        context = target.ssl_context()
        for device_id, password in self.credentials.items():
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
            client.username_pw_set(device_id, password)
            if context is not None:
                client.tls_set_context(context)
            client.max_inflight_messages_set(100)
            client.reconnect_delay_set(min_delay=self.reconnect_s, max_delay=max(4 * self.reconnect_s, 0.1))  # type: ignore[arg-type]
            client.on_publish = self._on_publish
            connected = threading.Event()
            client.on_connect = lambda *_a, ev=connected: ev.set()
            client.connect(target.host, target.port)
            client.loop_start()
            assert connected.wait(10), f"device {device_id} could not connect"
            self._clients.append((device_id, client))
        self._thread = threading.Thread(target=self._run, name="device-feed")
        self._thread.start()
        return self

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self.accepted += 1

    def _run(self) -> None:
        k = 0
        start = time.monotonic()
        while not self._stop.is_set():
            for device_id, client in self._clients:
                when = self.base + timedelta(milliseconds=10 * k)
                body = {"v": 1, "ts": when.isoformat(), "lat": 52.5 + k * 1e-6, "lon": 13.4, "speed_kmh": 12.0}
                client.publish(f"fleet/{device_id}/telemetry", orjson.dumps(body), qos=1)
                self.published += 1
            k += 1
            self._stop.wait(max(0.0, start + k / self.rate - time.monotonic()))

    def stop(self, settle_s: float = 30.0) -> None:
        """Stop publishing and wait until the broker has acknowledged everything published."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            wait_for(lambda: self.accepted >= self.published, settle_s, "every report acknowledged by the broker")
        finally:
            for _device_id, client in self._clients:
                client.disconnect()
                client.loop_stop()


def api_key(endpoints: Endpoints, role: Role = Role.ADMIN, name: str = "tests") -> str:
    """A fresh API key of `role` (its token), made the way `fleet keys create` makes one (the
    `admin_key` fixture of tests/conftest.py is the same for an admin)."""
    with psycopg.connect(endpoints.database_url) as conn:
        _, token = keystore.create_key(conn, name, role, keystore.Actor(None, "tests", None))
    return token


def api_client(endpoints: Endpoints, role: Role = Role.ADMIN, *, registry: bool = False) -> TestClient:
    """The operator API on the session's servers under its own database role and Redis user, as `fleet
    api` runs it, calling with a key of `role`; `registry` gives it the broker admin account (device
    registration)."""
    own = api_config(endpoints)
    config = ApiConfig(own.database_url, own.redis_url, own.mqtt_admin_url if registry else None,
                       mqtt_url=endpoints.mqtt_url)  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key(endpoints, role)}"}
    return TestClient(create_app(config), headers=headers)
