"""The gateway process: MQTT in, Redis stream out, acknowledging only what Redis holds.

One thread does everything, in a loop: take every complete message the broker has sent (up to
`MAX_BATCH`), decode the batch, write it to Redis as one stream entry, then send the batch's PUBACKs
in one write. A crash at any point therefore leaves each message either in Redis or still
unacknowledged at the broker, which redelivers it to the persistent session; the ingest side's
uniqueness rule folds the duplicates. While a batch is being stored the broker's messages wait in
the socket buffer; the session's receive maximum bounds how many are in flight to us.

Several gateway processes share the device topics through an MQTT 5 shared subscription; each needs
its own client id (`instance`), because the client id names the persistent session.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from gateway import decoders
from gateway.intake import Intake, Outcome, classify
from gateway.mqtt_session import Inbound, MqttSession, SessionError
from gateway.ratelimit import RateLimitedLog
from gateway.records import RawMessage
from gateway.redis_client import stream_client
from gateway.settings import MqttTarget
from gateway.wire import FIELD, encode_entry

log = logging.getLogger(__name__)

SUBSCRIPTIONS = ("fleet/+/telemetry", "fleet/+/nmea", "fleet/+/status", "fleet/+/cmd/ack", "owntracks/+/+")
SHARE_GROUP = "fleet-gateway"
FLUSH_INTERVAL_S = 0.02  # longest the loop waits for a first message before doing housekeeping
MAX_BATCH = 5000  # messages per stream entry
# After the first message of a batch, keep receiving for up to LINGER_S unless LINGER_UNTIL messages
# are in: a batch of 20 messages costs the whole pipeline (stream entry, worker read, live-state
# script, transaction) nearly what one of 500 does, so at moderate rates a few milliseconds of
# waiting buy a large share of the CPU. Under a backlog batches fill at once and nobody waits.
LINGER_S = 0.02
LINGER_UNTIL = 1000
RECEIVE_MAXIMUM = 20000  # unacknowledged QoS 1 messages the broker may have in flight to us
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue this long while we are away
KEEPALIVE_S = 30
REGISTRY_REFRESH_S = 1.0
REDIS_RETRY_S = 0.5
# Back quickly after a broker restart: Mosquitto 2.0 does not restore shared subscriptions from its
# persistence file, so until we subscribe again, device messages are acknowledged and delivered to
# nobody. Devices reconnect after a second or more (paho's default); a refused connect costs little.
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.05, 1.0


@dataclass(slots=True)
class GatewayStats:
    received: int = 0
    accepted_records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    flushes: int = 0
    connects: int = 0


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
        session_factory: Callable[..., MqttSession] = MqttSession,
    ) -> None:
        """`session_factory`: the MQTT session class (bench/session.py measures paho in its place)."""
        self._session_factory = session_factory
        self._target = mqtt_target
        self._tls = mqtt_target.ssl_context()  # None for plain MQTT; built once, reused by every reconnect
        self._redis = stream_client(redis_url)
        self._stream_key = stream_key
        self._client_id = client_id or f"fleet-gateway-{socket.gethostname()}"
        self._session: MqttSession | None = None
        self._connected = threading.Event()
        self._reconnect_delay = RECONNECT_MIN_S
        self._intake = Intake(
            decode=decode, max_payload=max_payload, future_tolerance_s=future_tolerance_s, known=frozenset()
        )
        self._registry_version: bytes | None = None
        self._registry_checked = 0.0
        self._warn = RateLimitedLog(log)
        self.stats = GatewayStats()

    @property
    def client_id(self) -> str:
        return self._client_id

    def wait_connected(self, timeout: float) -> bool:
        """True once subscribed (the SUBACK has arrived), so a test may start publishing."""
        return self._connected.wait(timeout)

    # -- main loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self._refresh_registry(force=True)
        try:
            while not stop.is_set():
                session = self._session or self._connect(stop)
                if session is None:
                    continue
                try:
                    inbound = self._receive(session)
                    if inbound.topics:
                        self._flush(session, inbound, stop)
                except SessionError as exc:
                    self._lost(exc)
                self._refresh_registry()
        finally:
            if self._session is not None:
                self._session.close()
            self._connected.clear()
            self._redis.close()
            s = self.stats
            log.info(
                "gateway %s stopped: %d messages in %d batches, %d records, %d dead letters, %d connects",
                *(self._client_id, s.received, s.flushes, s.accepted_records, s.dead_letters.total(), s.connects),
            )

    def retire(self, stop: threading.Event, quiet_s: float = 2.0) -> bool:
        """Take this gateway out of the shared subscription for good, losing nothing.

        Mosquitto keeps assigning a share of the messages to a persistent session even while its
        gateway is away, so a gateway that will not come back must be retired: unsubscribe (no new
        messages are assigned to it), store what is already queued for it until nothing has come for
        `quiet_s`, then end the session. Returns False if stopped before the queue was drained.
        """
        self._refresh_registry(force=True)
        session = None
        while session is None:
            if stop.is_set():
                return False
            session = self._connect(stop)
        try:
            session.unsubscribe([f"$share/{SHARE_GROUP}/{t}" for t in SUBSCRIPTIONS])
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < quiet_s:
                if stop.is_set():
                    return False
                inbound = session.receive(FLUSH_INTERVAL_S, MAX_BATCH)
                if inbound.topics:
                    self._flush(session, inbound, stop)
                    quiet_since = time.monotonic()
            session.end()
            log.info("gateway %s retired: its session is gone from the broker", self._client_id)
            return True
        except SessionError as exc:
            self._warn.warning("disconnect", "MQTT connection lost while retiring: %s", exc)
            return False
        finally:
            session.close()
            self._session = None
            self._connected.clear()
            self._redis.close()

    @staticmethod
    def _receive(session: MqttSession) -> Inbound:
        inbound = session.receive(FLUSH_INTERVAL_S, MAX_BATCH)
        if not inbound.topics:
            return inbound
        deadline = time.monotonic() + LINGER_S
        while len(inbound) < LINGER_UNTIL and (left := deadline - time.monotonic()) > 0:
            more = session.receive(left, MAX_BATCH - len(inbound))
            inbound.topics.extend(more.topics)
            inbound.payloads.extend(more.payloads)
            inbound.mids.extend(more.mids)
        return inbound

    def _connect(self, stop: threading.Event) -> MqttSession | None:
        session = self._session_factory(
            self._target.host, self._target.port, self._client_id, self._target.username, self._target.password,
            keepalive=KEEPALIVE_S, session_expiry_s=SESSION_EXPIRY_S, receive_maximum=RECEIVE_MAXIMUM,
            tls=self._tls,
        )  # fmt: skip
        try:
            session.connect([(f"$share/{SHARE_GROUP}/{t}", 1) for t in SUBSCRIPTIONS])
        except SessionError as exc:
            self._warn.warning("connect", "MQTT connect failed (retrying in %.1f s): %s", self._reconnect_delay, exc)
            stop.wait(self._reconnect_delay)
            self._reconnect_delay = min(self._reconnect_delay * 1.5, RECONNECT_MAX_S)
            return None
        self._session = session
        self._reconnect_delay = RECONNECT_MIN_S
        self.stats.connects += 1
        self._connected.set()
        log.info("gateway %s connected (session present: %s)", self._client_id, session.session_present)
        return session

    def _lost(self, exc: SessionError) -> None:
        """Messages received but not acknowledged on the lost connection come again on the next one."""
        self._warn.warning("disconnect", "MQTT connection lost: %s", exc)
        self._connected.clear()
        if self._session is not None:
            self._session.close()
        self._session = None

    def _flush(self, session: MqttSession, inbound: Inbound, stop: threading.Event) -> None:
        # One clock reading per batch: every message in it arrived within the last few milliseconds.
        now = datetime.now(UTC)
        messages = [RawMessage(t, p, now) for t, p in zip(inbound.topics, inbound.payloads, strict=True)]
        outcome = classify(messages, self._intake, now=now)
        while True:
            try:
                self._write(outcome)
                break
            except redis.RedisError as exc:
                # Nothing is acknowledged, so the broker keeps every message of this batch for us.
                self._warn.warning("redis", "Redis write failed, retrying: %s", exc)
                session.keep_alive()
                if stop.wait(REDIS_RETRY_S):
                    return
        session.ack(inbound.mids)
        self.stats.received += len(messages)
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


def quiet_collector() -> None:
    """For a service process: every message makes a handful of short-lived objects that never form
    cycles, and at the default threshold (700) the cycle collector ran hundreds of times a second for
    nothing (about 1 µs a message measured). Collect rarely; freeze what startup created."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def gateway_client_id(instance: str | None = None) -> str:
    """`fleet-gateway-<instance>`; the instance defaults to `FLEET_GATEWAY_ID`, then the host name.

    The client id names the broker-side persistent session, so it must be stable across restarts of
    the same gateway (its unacknowledged messages wait there) and distinct between gateways sharing
    the subscription (a second connection with the same id would take the session over).
    """
    return f"fleet-gateway-{instance or os.environ.get('FLEET_GATEWAY_ID') or socket.gethostname()}"


def run_gateway(
    mqtt_url: str,
    redis_url: str,
    stream_key: str,
    max_payload: int,
    tolerance_s: float,
    instance: str | None = None,
    *,
    retire: bool = False,
) -> int:
    """Entry point for `fleet gateway [--instance ID] [--retire]`: runs until SIGINT/SIGTERM, or with
    `retire` drains and deletes the instance's broker session; returns the process exit code."""
    from gateway.process import stop_on_signals

    stop = stop_on_signals()
    quiet_collector()
    gateway = Gateway(
        MqttTarget.parse(mqtt_url),
        redis_url,
        stream_key=stream_key,
        max_payload=max_payload,
        future_tolerance_s=tolerance_s,
        client_id=gateway_client_id(instance),
    )
    if retire:
        return 0 if gateway.retire(stop) else 1
    gateway.run(stop)
    return 0
