"""The command service's bulk publisher on the real broker: MQTT 5 expiry on every command, each
device's commands in order over several connections, and a broken connection opened again."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest
from fleet_harness import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from commands import publisher as publisher_module
from commands.publisher import CommandPublisher, Outgoing, lane
from kernel.endpoints import Endpoints
from kernel.mqtt_session import MqttSession
from kernel.settings import MqttTarget

pytestmark = pytest.mark.integration


def _commands_target(endpoints: Endpoints) -> MqttTarget:
    own = endpoints.for_service("commands")
    assert own.mqtt_url, "the stack has no command service account"
    return MqttTarget.parse(own.mqtt_url)


def _reader(endpoints: Endpoints, client_id: str) -> MqttSession:
    """A subscriber on every device's command topic (the gateway's account may read fleet/#)."""
    target = MqttTarget.parse(endpoints.mqtt_url)
    session = MqttSession(target.host, target.port, client_id, target.username, target.password)
    session.connect([("fleet/+/cmd", 1)])
    return session


def _drain(session: MqttSession, want: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        inbound = session.receive(0.2, 10_000)
        got += zip(inbound.topics, inbound.payloads, strict=True)
        session.ack(inbound.mids)
    return got


def test_several_connections_keep_each_devices_order(clean: Endpoints) -> None:
    devices = [f"order-{i}" for i in range(12)]
    assert len({lane(d, 3) for d in devices}) == 3, "the devices must spread over every connection"
    reader = _reader(clean, "test-order-reader")
    out = CommandPublisher(_commands_target(clean), "test-order", connections=3)
    try:
        out.open()
        sent = 0
        for burst in range(4):  # several rounds, each interleaving every device
            items = [
                Outgoing(d, f"fleet/{d}/cmd", f"{burst * 50 + n}".encode(), 60) for n in range(50) for d in devices
            ]
            sent += out.publish(items)
        assert sent == 4 * 50 * len(devices)
        got = _drain(reader, sent)
    finally:
        out.close()
        reader.end()
    by_device: dict[str, list[int]] = defaultdict(list)
    for topic, payload in got:
        by_device[topic.split("/")[1]].append(int(payload))
    assert sorted(by_device) == sorted(devices)
    for device, seq in by_device.items():
        assert seq == list(range(200)), f"{device} got its commands out of order or not all"


def test_every_command_carries_its_expiry(clean: Endpoints) -> None:
    target = MqttTarget.parse(clean.mqtt_url)
    received: list[mqtt.MQTTMessage] = []
    subscribed, done = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-expiry-reader", protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.on_connect = lambda c, *_a: c.subscribe("fleet/+/cmd", qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg)
        if len(received) == 2:
            done.set()

    client.on_message = on_message
    client.connect(target.host, target.port)
    client.loop_start()
    out = CommandPublisher(_commands_target(clean), "test-expiry")
    try:
        assert subscribed.wait(10)
        assert out.publish(
            [Outgoing("exp-1", "fleet/exp-1/cmd", b"a", 30), Outgoing("exp-2", "fleet/exp-2/cmd", b"b", 0)]
        )
        assert done.wait(10), "the commands did not arrive"
    finally:
        out.close()
        client.disconnect()
        client.loop_stop()
    first, second = sorted(received, key=lambda m: m.payload)
    assert 0 < first.properties.MessageExpiryInterval <= 30  # type: ignore[union-attr]
    assert not hasattr(second.properties, "MessageExpiryInterval")  # 0: none sent, never expires


def test_a_broken_connection_is_opened_again(clean: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "RECONNECT_S", 0.2)
    reader = _reader(clean, "test-reconnect-reader")
    out = CommandPublisher(_commands_target(clean), "test-reconnect")
    try:
        out.open()
        assert out.publish([Outgoing("re-1", "fleet/re-1/cmd", b"1", 60)]) == 1
        conn = out._lanes[0]
        assert conn._sock is not None
        conn._sock.shutdown(2)  # as a broker restart would: the reader sees the end, the lane is down
        wait_for(lambda: not conn.up, 5, "the broken connection noticed")
        time.sleep(0.3)
        assert out.publish([Outgoing("re-1", "fleet/re-1/cmd", b"2", 60)]) == 1
        got = _drain(reader, 2)
    finally:
        out.close()
        reader.end()
    assert [p for _t, p in got] == [b"1", b"2"]


def test_lanes_are_stable_and_within_range() -> None:
    ids = [f"bike-{i}" for i in range(1000)]
    for lanes in (1, 2, 5):
        picked = [lane(d, lanes) for d in ids]
        assert picked == [lane(d, lanes) for d in ids]
        assert set(picked) == set(range(lanes))
