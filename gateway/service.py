"""The gateway process: MQTT in, Redis stream out, acknowledging only what Redis holds.

One thread does everything, in a loop: take every complete message the broker has sent (up to
`MAX_BATCH`), decode the batch, write it to Redis as one stream entry, then send the batch's PUBACKs
in one write. A crash at any point therefore leaves each message either in Redis or still
unacknowledged at the broker, which redelivers it to the persistent session; the ingest side's
uniqueness rule folds the duplicates. While a batch is being stored the broker's messages wait in
the socket buffer; the session's receive maximum bounds how many are in flight to us.

One gateway subscribes to the device topics directly, which survives a broker restart (see
`subscription_filters`); several gateway processes (`shared`) share them through an MQTT 5 shared
subscription instead. Each needs its own client id (`instance`): it names the persistent session.
"""

from __future__ import annotations

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
from gateway.guarded_intake import classify_guarded, classify_isolated
from gateway.intake import Intake, Outcome
from kernel import keys, metrics
from kernel.mqtt_session import Inbound, MqttSession, SessionError
from kernel.ratelimit import RateLimitedLog
from kernel.records import RawMessage
from kernel.settings import MqttTarget
from kernel.streams import stream_client
from kernel.wire import FIELD, encode_entry

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
# Back quickly after a broker restart: with shared subscriptions (several gateways) Mosquitto 2.0 does
# not restore them from its persistence file, so until we subscribe again, device messages are
# acknowledged and delivered to nobody. A refused connect costs little.
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
        shared: bool = False,
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
        self._filters, self._other_filters = subscription_filters(shared)
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
                    self._keep(exc.received, stop)
                except Exception as exc:  # never ends the loop: reconnect, the broker redelivers the batch
                    self._warn.warning("unexpected", "gateway failed on a batch, reconnecting: %r", exc)
                    log.debug("gateway failure", exc_info=True)
                    self._lost(SessionError(repr(exc)))
                    stop.wait(REDIS_RETRY_S)
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
            session.unsubscribe([f for f, _o in self._filters] + self._other_filters)
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
            try:
                more = session.receive(left, MAX_BATCH - len(inbound))
            except SessionError as exc:  # hand on everything received so far, not only the last read
                _extend(inbound, exc.received)
                exc.received = inbound
                raise
            _extend(inbound, more)
        return inbound

    def _connect(self, stop: threading.Event) -> MqttSession | None:
        session = self._session_factory(
            self._target.host, self._target.port, self._client_id, self._target.username, self._target.password,
            keepalive=KEEPALIVE_S, session_expiry_s=SESSION_EXPIRY_S, receive_maximum=RECEIVE_MAXIMUM,
            tls=self._tls,
        )  # fmt: skip
        try:
            session.connect(self._filters)
            # The session may hold the other mode's subscriptions from an earlier run: drop them, or
            # every message would come twice. The UNSUBACK is read (and skipped) by `receive`.
            session.unsubscribe(self._other_filters)
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

    def _keep(self, received: Inbound | None, stop: threading.Event) -> None:
        """Messages read before the connection broke: stored, not acknowledged. A broker restarted
        from an older snapshot (after a kill -9) would not send them again."""
        if received is None or not received.topics:
            return
        try:
            self._flush(None, received, stop)
        except Exception as exc:
            self._warn.warning("keep", "could not store messages read before the connection broke: %r", exc)

    def _lost(self, exc: SessionError) -> None:
        """Messages received but not acknowledged on the lost connection come again on the next one."""
        self._warn.warning("disconnect", "MQTT connection lost: %s", exc)
        self._connected.clear()
        if self._session is not None:
            self._session.close()
        self._session = None

    def _flush(self, session: MqttSession | None, inbound: Inbound, stop: threading.Event) -> None:
        """Store the batch in Redis, then acknowledge it on `session` (None: the connection it came
        on is gone, so the broker may or may not send it again; ingest folds a second copy)."""
        # One clock reading per batch: every message in it arrived within the last few milliseconds.
        now = datetime.now(UTC)
        messages = [RawMessage(t, p, now) for t, p in zip(inbound.topics, inbound.payloads, strict=True)]
        self._admit_misses(messages)
        outcome, failure = classify_guarded(messages, self._intake, now)
        if failure:
            self._warn.warning("classify", "decoding a batch failed, classified message by message: %s", failure)
        for key, text in outcome.warnings:
            self._warn.warning(key, "%s", text)
        while True:
            try:
                self._write(outcome)
                break
            except redis.RedisError as exc:
                # Nothing is acknowledged, so the broker keeps every message of this batch for us.
                self._warn.warning("redis", "Redis write failed, retrying: %s", exc)
                if session is not None:
                    session.keep_alive()
                if stop.wait(REDIS_RETRY_S):
                    return
            except Exception as exc:  # a record the stream format cannot carry (e.g. a lone surrogate)
                self._warn.warning("encode", "a batch could not be written, isolating its messages: %r", exc)
                outcome = classify_isolated(messages, self._intake, now)
        if session is not None:
            session.ack(inbound.mids)
        self.stats.received += len(messages)
        self.stats.accepted_records += len(outcome.entry.records)
        self.stats.dead_letters.update(d.reason for d in outcome.entry.dead)
        self.stats.flushes += 1

    def _admit_misses(self, messages: list[RawMessage]) -> None:
        """A device is known from the moment its registration returns, though the cached set is
        reloaded only every `REGISTRY_REFRESH_S`: the batch's devices missing from the cache are
        looked up in the registry (one SMISMEMBER for all of them) before any is refused. A miss
        that is truly unknown costs one round trip per batch, not per message."""
        known = self._intake.known
        misses: set[str] = set()
        for msg in messages:
            route = decoders.route(msg.topic)
            if route is not None and route.device_id not in known:
                misses.add(route.device_id)
        if not misses:
            return
        ids = sorted(misses)
        try:
            found = self._redis.smismember(keys.DEVICES, ids)
        except redis.RedisError as exc:
            self._warn.warning("registry", "cannot look up unknown devices in the registry: %s", exc)
            return
        admitted = {i for i, hit in zip(ids, found, strict=True) if hit}
        if admitted:
            self._intake = self._intake.with_known(known | admitted)

    def _write(self, outcome: Outcome) -> None:
        pipe = self._redis.pipeline(transaction=False)
        entry = outcome.entry
        if entry.records or entry.dead:
            pipe.xadd(self._stream_key, {FIELD: encode_entry(entry)})
        for device_id, online in outcome.status.items():
            pipe.hset(keys.ONLINE, device_id, "1" if online else "0")
        for ack in outcome.acks:
            pipe.xadd(keys.CMD_ACKS_STREAM, {b"a": ack})
        counters = Counter({"received": len(outcome.messages), "records": len(entry.records)})
        counters.update(f"dead:{d.reason}" for d in entry.dead)
        counters.update(f"ignored:{r}" for r in outcome.ignored)
        counters.update(outcome.counters)
        for name, n in counters.items():
            pipe.hincrby(keys.COUNTERS, name, n)
        started = time.perf_counter()
        pipe.execute()
        metrics.COMMIT_SECONDS.labels("gateway").observe(time.perf_counter() - started)
        metrics.MESSAGES_IN.labels("gateway").inc(len(outcome.messages))
        metrics.BATCH_SIZE.labels("gateway").observe(len(outcome.messages))
        for letter in entry.dead:
            metrics.DEAD_LETTERS.labels("gateway", letter.reason).inc()

    def _refresh_registry(self, *, force: bool = False) -> None:
        """The gateway refuses reports from devices the registry does not know; the set is cached
        and reloaded only when the registry's version counter moves."""
        now = time.monotonic()
        if not force and now - self._registry_checked < REGISTRY_REFRESH_S:
            return
        self._registry_checked = now
        try:
            version = self._redis.get(keys.DEVICES_VERSION)
            if version == self._registry_version and not force:
                return
            members = self._redis.smembers(keys.DEVICES)
        except redis.RedisError as exc:
            self._warn.warning("registry", "cannot refresh device registry: %s", exc)
            return
        self._registry_version = version
        self._intake = self._intake.with_known(frozenset(m.decode() for m in members))


NO_RETAINED = 0x20  # subscription option "retain handling 2": no retained messages on subscribing


def _extend(inbound: Inbound, more: Inbound | None) -> None:
    if more is not None:
        inbound.topics.extend(more.topics)
        inbound.payloads.extend(more.payloads)
        inbound.mids.extend(more.mids)


def subscription_filters(shared: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """(filters with their subscription options, the other mode's filters to drop).

    One gateway (the default) subscribes without `$share`: Mosquitto 2.0.11 restores a persistent
    session's plain subscriptions from its persistence file after a restart, so messages devices
    publish before the gateway is back queue for it; it does not restore shared subscriptions, so
    with several gateways (`shared`) such messages reach nobody until the first gateway resubscribes
    (docs/ARCHITECTURE.md). Retained status messages are not sent on subscribing, as with `$share`
    (where MQTT 5 never sends them): a reconnect must not replay every device's last status.
    """
    plain = [(t, 1 | NO_RETAINED) for t in SUBSCRIPTIONS]
    share = [(f"$share/{SHARE_GROUP}/{t}", 1) for t in SUBSCRIPTIONS]
    if shared:
        return share, [f for f, _o in plain]
    return plain, [f for f, _o in share]


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
    shared: bool = False,
) -> int:
    """Entry point for `fleet gateway [--instance ID] [--retire]`: runs until SIGINT/SIGTERM, or with
    `retire` drains and deletes the instance's broker session; returns the process exit code."""
    from kernel.process import quiet_collector, stop_on_signals

    stop = stop_on_signals()
    quiet_collector()
    gateway = Gateway(
        MqttTarget.parse(mqtt_url),
        redis_url,
        stream_key=stream_key,
        max_payload=max_payload,
        future_tolerance_s=tolerance_s,
        client_id=gateway_client_id(instance),
        shared=shared,
    )
    if retire:
        return 0 if gateway.retire(stop) else 1
    gateway.run(stop)
    return 0
