"""The gateway process: MQTT in, Redis stream out, acknowledging only what Redis holds.

paho's network thread only queues messages; the main thread drains the queue in batches, decodes,
writes one stream entry per batch, and only then sends the MQTT PUBACKs (`manual_ack`). A crash at
any point therefore leaves each message either in Redis or still unacknowledged at the broker, which
redelivers it to the persistent session; the ingest side's uniqueness rule folds the duplicates.

Several gateway processes share the device topics through an MQTT 5 shared subscription.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import decoders
from gateway.intake import Intake, Outcome, classify
from gateway.ratelimit import RateLimitedLog
from gateway.records import RawMessage
from gateway.settings import MqttTarget
from gateway.wire import FIELD, encode_entry

log = logging.getLogger(__name__)

SUBSCRIPTIONS = ("fleet/+/telemetry", "fleet/+/nmea", "fleet/+/status", "fleet/+/cmd/ack", "owntracks/+/+")
SHARE_GROUP = "fleet-gateway"
FLUSH_INTERVAL_S = 0.02  # longest a message waits for its batch
MAX_BATCH = 2000  # messages per stream entry
RECEIVE_MAXIMUM = 20000  # unacked QoS 1 messages the broker may have in flight to us
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue this long while we are away
REGISTRY_REFRESH_S = 1.0
REDIS_RETRY_S = 0.5


@dataclass(slots=True)
class _Delivery:
    message: RawMessage
    mid: int
    qos: int
    generation: int


@dataclass(slots=True)
class GatewayStats:
    received: int = 0
    accepted_records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    flushes: int = 0


class Gateway:
    """One gateway process. `run()` blocks until `stop` is set."""

    def __init__(
        self,
        mqtt_target: MqttTarget,
        redis_url: str,
        *,
        stream_key: str,
        max_payload: int,
        future_tolerance_s: float,
        client_id: str | None = None,
        decode: Callable[..., decoders.Decoded] = decoders.decode,
    ) -> None:
        self._target = mqtt_target
        self._redis = redis.Redis.from_url(redis_url)
        self._stream_key = stream_key
        self._client_id = client_id or f"fleet-gateway-{socket.gethostname()}"
        self._queue: queue.SimpleQueue[_Delivery] = queue.SimpleQueue()
        self._generation = 0
        self._connected = threading.Event()
        self._intake = Intake(
            decode=decode, max_payload=max_payload, future_tolerance_s=future_tolerance_s, known=frozenset()
        )
        self._registry_version: bytes | None = None
        self._registry_checked = 0.0
        self._warn = RateLimitedLog(log)
        self.stats = GatewayStats()
        self._client = self._make_client()

    # -- MQTT ---------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self._target.username:
            client.username_pw_set(self._target.username, self._target.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.max_queued_messages_set(0)
        return client

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self._warn.warning("connect", "MQTT connect refused: %s", reason)
            return
        self._generation += 1
        client.subscribe([(f"$share/{SHARE_GROUP}/{t}", 1) for t in SUBSCRIPTIONS])
        self._connected.set()
        log.info("gateway %s connected (generation %d)", self._client_id, self._generation)

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self._connected.clear()
        self._warn.warning("disconnect", "MQTT disconnected: %s", reason)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        raw = RawMessage(msg.topic, msg.payload, datetime.now(UTC))
        self._queue.put(_Delivery(raw, msg.mid, msg.qos, self._generation))

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._client.connect_async(
            self._target.host, self._target.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self._refresh_registry(force=True)
        self._connect()
        try:
            while not stop.is_set():
                batch = self._take_batch()
                if batch:
                    self._flush(batch, stop)
                self._refresh_registry()
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._redis.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _take_batch(self) -> list[_Delivery]:
        """Everything waiting, up to MAX_BATCH, waiting at most FLUSH_INTERVAL_S for the first."""
        try:
            first = self._queue.get(timeout=FLUSH_INTERVAL_S)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + FLUSH_INTERVAL_S
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        return batch

    def _flush(self, batch: list[_Delivery], stop: threading.Event) -> None:
        outcome = classify([d.message for d in batch], self._intake, now=datetime.now(UTC))
        while True:
            try:
                self._write(outcome)
                break
            except redis.RedisError as exc:
                # Nothing is acknowledged, so the broker keeps every message of this batch for us.
                self._warn.warning("redis", "Redis write failed, retrying: %s", exc)
                if stop.wait(REDIS_RETRY_S):
                    return
        for delivery in batch:
            if delivery.qos > 0 and delivery.generation == self._generation:
                self._client.ack(delivery.mid, delivery.qos)
        self.stats.received += len(batch)
        self.stats.accepted_records += len(outcome.entry.records)
        self.stats.dead_letters.update(d.reason for d in outcome.entry.dead)
        self.stats.flushes += 1

    def _write(self, outcome: Outcome) -> None:
        pipe = self._redis.pipeline(transaction=False)
        entry = outcome.entry
        if entry.records or entry.dead:
            pipe.xadd(self._stream_key, {FIELD: encode_entry(entry)})
        for device_id, online in outcome.status.items():
            pipe.hset("fleet:online", device_id, "1" if online else "0")
        for ack in outcome.acks:
            pipe.xadd("fleet:cmd-acks", {b"a": ack})
        counters = Counter({"received": len(outcome.messages), "records": len(entry.records)})
        counters.update(f"dead:{d.reason}" for d in entry.dead)
        counters.update(f"ignored:{r}" for r in outcome.ignored)
        for name, n in counters.items():
            pipe.hincrby("fleet:counters", name, n)
        pipe.execute()

    def _refresh_registry(self, *, force: bool = False) -> None:
        """The gateway refuses reports from devices the registry does not know; the set is cached
        and reloaded only when the registry's version counter moves."""
        now = time.monotonic()
        if not force and now - self._registry_checked < REGISTRY_REFRESH_S:
            return
        self._registry_checked = now
        try:
            version = self._redis.get("fleet:devices:version")
            if version == self._registry_version and not force:
                return
            members = self._redis.smembers("fleet:devices")
        except redis.RedisError as exc:
            self._warn.warning("registry", "cannot refresh device registry: %s", exc)
            return
        self._registry_version = version
        self._intake = self._intake.with_known(frozenset(m.decode() for m in members))


def run_gateway(mqtt_url: str, redis_url: str, stream_key: str, max_payload: int, tolerance_s: float) -> None:
    """Entry point for `fleet gateway`: runs until SIGINT/SIGTERM."""
    from gateway.process import stop_on_signals

    stop = stop_on_signals()
    gateway = Gateway(
        MqttTarget.parse(mqtt_url),
        redis_url,
        stream_key=stream_key,
        max_payload=max_payload,
        future_tolerance_s=tolerance_s,
    )
    gateway.run(stop)
