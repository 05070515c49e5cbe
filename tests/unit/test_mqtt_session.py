"""The gateway's MQTT 5 session against a scripted broker on a loopback socket: packets split at every
byte, messages that arrive before the SUBACK, properties, bulk PUBACKs, refusals and broken streams."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from gateway.mqtt_codec import encode_varint
from gateway.mqtt_session import MqttSession, SessionError

Script = Callable[[socket.socket], None]


def publish(topic: str, payload: bytes, mid: int = 0, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    if mid:
        body += struct.pack("!H", mid)
    body += encode_varint(len(props)) + props + payload
    return bytes([0x32 if mid else 0x30]) + encode_varint(len(body)) + body


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    first = sock.recv(1)
    length, shift = 0, 0
    while True:
        digit = sock.recv(1)[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return first[0] >> 4, body


CONNACK = b"\x20\x03\x00\x00\x00"
SUBACK_OK = b"\x90\x04\x00\x01\x00\x01"


@contextmanager
def broker(script: Script) -> Iterator[tuple[int, list[BaseException]]]:
    server = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                script(conn)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield server.getsockname()[1], errors
    finally:
        thread.join(10)
        server.close()


def session(port: int) -> MqttSession:
    return MqttSession("127.0.0.1", port, "gw-test", "svc", "pw", keepalive=30)


def handshake(conn: socket.socket, before_suback: bytes = b"") -> None:
    kind, body = read_packet(conn)
    assert kind == 1 and body[6] == 5, "MQTT 5 CONNECT"
    assert body[7] & 0x02 == 0, "clean start must be off for a persistent session"
    conn.sendall(CONNACK)
    kind, _body = read_packet(conn)
    assert kind == 8
    conn.sendall(before_suback + SUBACK_OK)


def test_messages_split_at_every_byte_are_parsed_and_acknowledged_together() -> None:
    stream = b"".join(publish(f"fleet/d{i}/telemetry", b"x" * i, mid=i + 1) for i in range(1, 40))
    stream += publish("fleet/d0/telemetry", b"q0")  # QoS 0: nothing to acknowledge
    stream += publish("fleet/d1/telemetry", b"props", mid=77, props=b"\x01\x01")  # payload format indicator
    acked: list[int] = []

    def script(conn: socket.socket) -> None:
        handshake(conn)
        for i in range(len(stream)):
            conn.sendall(stream[i : i + 1])
        kind, body = read_packet(conn)
        while kind == 4:
            acked.append(struct.unpack("!H", body[:2])[0])
            if len(acked) == 40:
                break
            kind, body = read_packet(conn)

    with broker(script) as (port, errors):
        s = session(port)
        s.connect([("$share/g/fleet/+/telemetry", 1)])
        topics, payloads, mids = [], [], []
        while len(topics) < 41:
            got = s.receive(1.0, 1000)
            topics += got.topics
            payloads += got.payloads
            mids += got.mids
        s.ack(mids)
        s.close()
    assert not errors, errors
    assert topics[0] == "fleet/d1/telemetry" and payloads[0] == b"x"
    assert payloads[39] == b"q0" and mids[39] == 0
    assert payloads[40] == b"props" and mids[40] == 77
    assert acked == [*range(2, 41), 77]


def test_queued_messages_sent_before_the_suback_are_kept() -> None:
    early = publish("fleet/a/telemetry", b"early", mid=5)

    def script(conn: socket.socket) -> None:
        handshake(conn, before_suback=early)
        read_packet(conn)  # the PUBACK

    with broker(script) as (port, errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])
        got = s.receive(1.0, 10)
        s.ack(got.mids)
        s.close()
    assert not errors, errors
    assert got.payloads == [b"early"] and got.mids == [5]


def test_a_refused_connection_and_a_refused_subscription_are_session_errors() -> None:
    def refuse(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x03\x00\x87\x00")  # not authorised

    with broker(refuse) as (port, _errors), pytest.raises(SessionError, match="0x87"):
        session(port).connect([("fleet/+/telemetry", 1)])

    def refuse_sub(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(CONNACK)
        read_packet(conn)
        conn.sendall(b"\x90\x04\x00\x01\x00\x87")

    with broker(refuse_sub) as (port, _errors), pytest.raises(SessionError, match="refused the subscriptions"):
        session(port).connect([("fleet/+/telemetry", 1)])


def test_a_closed_or_garbled_stream_ends_the_session() -> None:
    def hang_up(conn: socket.socket) -> None:
        handshake(conn)

    with broker(hang_up) as (port, _errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])

        def receive_until_it_breaks() -> None:
            while True:
                s.receive(1.0, 10)

        with pytest.raises(SessionError, match="closed"):
            receive_until_it_breaks()
        assert not s.connected

    def garble(conn: socket.socket) -> None:
        handshake(conn)
        conn.sendall(b"\x32\xff\xff\xff\xff\x01")  # a remaining length longer than MQTT allows
        read_packet(conn)

    with broker(garble) as (port, _errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])
        with pytest.raises(SessionError, match="malformed"):
            s.receive(1.0, 10)
        assert not s.connected
