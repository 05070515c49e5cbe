"""paho-mqtt with manual acknowledgement behind the gateway's session interface, for bench/session.py.

The gateway is written against `kernel.mqtt_session.MqttSession`; this class offers the same methods
on top of paho 2 (MQTT 5, clean start off, session expiry, receive maximum, `manual_ack=True`), so the
same gateway loop can run on either and the benchmark compares the MQTT clients alone: messages are
handed over by paho's network thread and acknowledged with `client.ack()` once the batch is in Redis.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from kernel.mqtt_session import Inbound, SessionError


class PahoSession:
    def __init__(
        self, host: str, port: int, client_id: str, username: str | None, password: str | None, *,
        keepalive: int = 30, session_expiry_s: int = 7 * 24 * 3600, receive_maximum: int = 20_000,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self._address = (host, port)
        self._keepalive = keepalive
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = session_expiry_s
        self._props.ReceiveMaximum = receive_maximum
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._cond = threading.Condition()
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._mids: list[int] = []
        self._failed: str | None = None
        self._subscribed = threading.Event()
        self._running = False
        self.session_present = False
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_unsubscribe = lambda *_a: self._subscribed.set()

    def connect(self, filters: Sequence[tuple[str, int]], timeout: float = 10.0) -> None:
        try:
            self._client.connect(*self._address, keepalive=self._keepalive, clean_start=False,
                                 properties=self._props)  # fmt: skip
        except OSError as exc:
            raise SessionError(f"cannot reach the broker: {exc}") from None
        self._client.loop_start()
        self._running = True
        self._client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in filters])
        if not self._subscribed.wait(timeout):
            self.close()
            raise SessionError("no SUBACK")

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._topics.append(message.topic)
            self._payloads.append(message.payload)
            self._mids.append(message.mid if message.qos else 0)
            self._cond.notify()

    def _on_disconnect(self, *args: object) -> None:
        with self._cond:
            self._failed = f"disconnected: {args[3] if len(args) > 3 else args}"
            self._cond.notify()

    def receive(self, timeout: float, max_messages: int) -> Inbound:
        with self._cond:
            if not self._topics and self._failed is None:
                self._cond.wait(timeout)
            if self._failed is not None and self._running:
                raise SessionError(self._failed)
            n = min(max_messages, len(self._topics))
            inbound = Inbound(self._topics[:n], self._payloads[:n], self._mids[:n])
            del self._topics[:n], self._payloads[:n], self._mids[:n]
        return inbound

    def ack(self, mids: Iterable[int]) -> None:
        for mid in mids:
            if mid:
                self._client.ack(mid, 1)

    def keep_alive(self) -> None:
        """paho's network thread sends PINGREQs on its own."""

    def unsubscribe(self, filters: Sequence[str], timeout: float = 10.0) -> None:
        self._subscribed.clear()
        self._client.unsubscribe(list(filters))
        if not self._subscribed.wait(timeout):
            raise SessionError("no UNSUBACK")

    def close(self) -> None:
        if self._running:
            self._running = False
            self._client.disconnect()
            self._client.loop_stop()

    def end(self) -> None:
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        if self._running:
            self._running = False
            self._client.disconnect(properties=props)
            time.sleep(0.1)
            self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._running
