"""The command service's inputs, each on its own thread, all into one queue the deciding thread reads:
device status from the broker, acks from the gateway's stream, live state and wake-ups from pub/sub."""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import redis
from paho.mqtt.enums import CallbackAPIVersion

from commands.issue import WAKE_CHANNEL
from commands.wire import ACKS_STREAM
from kernel.deadletter_store import quarantine_rows
from kernel.livestate import LIVE_CHANNEL
from kernel.ratelimit import RateLimitedLog
from kernel.settings import MqttTarget
from kernel.streams import GroupReader

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log)

Inbox = queue.Queue[tuple[str, Any]]
CLAIM_IDLE_MS = 15_000  # an ack another service read and left this long is taken over
RETRY_S = 1.0


def status_client(target: MqttTarget, client_id: str, inbox: Inbox) -> mqtt.Client:
    """The service's subscribing connection: reads `fleet/+/status` (retained, so a fresh subscription
    learns at once who is online). Commands go out through `commands.publisher`."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if target.username:
        client.username_pw_set(target.username, target.password)
    tls = target.ssl_context()
    if tls is not None:
        client.tls_set_context(tls)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.on_connect = lambda c, *_a: c.subscribe("fleet/+/status", qos=1)

    def on_status(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        payload = msg.payload.strip()
        if len(parts) == 3 and payload in (b"online", b"offline"):
            inbox.put(("status", (parts[1], payload == b"online")))

    client.on_message = on_status
    return client


def read_acks(redis_url: str, group: str, consumer: str, inbox: Inbox, stop: threading.Event) -> None:
    client = redis.Redis.from_url(redis_url)
    reader = GroupReader(client, ACKS_STREAM, group, consumer, count=1000, block_ms=200,
                         claim_idle_ms=CLAIM_IDLE_MS, claim_check_s=5.0)  # fmt: skip
    ensured = False
    try:
        while not stop.is_set():
            try:
                ensured = ensured or reader.ensure_group()
                read = reader.read()
                if read.quarantine:  # acks the service failed on again and again: kept aside, never retried
                    inbox.put(("quarantined", quarantine_rows(ACKS_STREAM, read.quarantine, datetime.now(UTC))))
                    reader.quarantine(read.quarantine, reason="commands: an ack that kept failing")
            except redis.RedisError as exc:
                _warn.warning("acks", "commands: cannot read acks: %s", exc)
                stop.wait(RETRY_S)
                continue
            if read.entries:
                inbox.put(("acks", read.entries))
    finally:
        client.close()


def read_pubsub(redis_url: str, inbox: Inbox, stop: threading.Event) -> None:
    """Live state and wake-ups. After every (re)subscription a `resync` tells the service to reread
    what it may have missed meanwhile."""
    while not stop.is_set():
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(LIVE_CHANNEL, WAKE_CHANNEL)
            inbox.put(("resync", None))
            while not stop.is_set():
                msg = pubsub.get_message(timeout=0.2)
                if msg is not None:
                    inbox.put((msg["channel"].decode(), msg["data"]))
        except redis.RedisError as exc:
            _warn.warning("pubsub", "commands: live state lost, resubscribing: %s", exc)
            stop.wait(RETRY_S)
        finally:
            pubsub.close()
            client.close()
