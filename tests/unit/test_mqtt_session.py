"""The gateway's MQTT 5 session against a scripted broker on a loopback socket: packets split at every
byte, messages that arrive before the SUBACK, properties, bulk PUBACKs, refusals and broken streams."""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kernel import mqtt_codec as codec
from kernel import mqtt_session
from kernel.mqtt_codec import encode_varint
from kernel.mqtt_session import MAX_PACKET_BYTES, MqttSession, SessionError
from localstack import tls

Script = Callable[[socket.socket], None]


def publish(topic: str, payload: bytes, mid: int = 0, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    if mid:
        body += struct.pack("!H", mid)
    body += encode_varint(len(props)) + props + payload
    return bytes([0x32 if mid else 0x30]) + encode_varint(len(body)) + body


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    def more(n: int) -> bytes:
        data = sock.recv(n)
        if not data:
            raise ConnectionError("the session closed the connection")
        return data

    header = more(1)
    while True:
        length, start = codec.decode_varint(header, 1)
        if start > 0:
            break
        header += more(1)
    body = b""
    while len(body) < length:
        body += more(length - len(body))
    return header[0] >> 4, body


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


def connect_properties(conn: socket.socket) -> dict[int, int | str | bytes]:
    kind, body = read_packet(conn)
    assert kind == 1
    props, _end = codec.parse_properties(body, 10, len(body))
    return props


def test_connect_announces_maximum_packet_size_and_obeys_server_keep_alive() -> None:
    seen: dict[int, int | str | bytes] = {}

    def script(conn: socket.socket) -> None:
        seen.update(connect_properties(conn))
        conn.sendall(b"\x20\x06\x00\x00\x03\x13\x00\x02")  # CONNACK, Server Keep Alive 2 s
        read_packet(conn)
        conn.sendall(SUBACK_OK)
        kind, _ = read_packet(conn)  # a PINGREQ within a second (half of 2 s), not after 15 s (half of 30)
        assert kind == 12
        conn.sendall(b"\xd0\x00")
        read_packet(conn)  # DISCONNECT

    with broker(script) as (port, errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])
        connected = time.monotonic()
        assert s.keepalive == 2
        while s._last_sent < connected and time.monotonic() - connected < 3:
            s.receive(0.1, 10)
        pinged_after = s._last_sent - connected
        s.receive(0.2, 10)  # the PINGRESP
        s.close()
    assert not errors, errors
    assert 0.9 < pinged_after < 1.5
    assert seen[codec.MAXIMUM_PACKET_SIZE] == MAX_PACKET_BYTES and seen[codec.RECEIVE_MAXIMUM] == 20_000


def test_a_broker_without_shared_subscriptions_or_qos_1_is_refused() -> None:
    def no_shared(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x05\x00\x00\x02\x2a\x00")

    with broker(no_shared) as (port, _errors), pytest.raises(SessionError, match="shared"):
        session(port).connect([("$share/g/fleet/+/telemetry", 1)])

    def qos0_only(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x05\x00\x00\x02\x24\x00")

    with broker(qos0_only) as (port, _errors), pytest.raises(SessionError, match="QoS 0"):
        session(port).connect([("fleet/+/telemetry", 1)])


def test_the_brokers_maximum_packet_size_bounds_what_we_send() -> None:
    def small(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\x10")  # 16 bytes at most

    with broker(small) as (port, _errors), pytest.raises(SessionError, match="Maximum Packet Size"):
        session(port).connect([("fleet/+/telemetry/with/a/long/filter", 1)])


def test_unsubscribe_waits_for_unsuback_and_keeps_messages_that_come_first() -> None:
    early = publish("fleet/a/telemetry", b"in flight", mid=8)
    order: list[str] = []

    def script(conn: socket.socket) -> None:
        handshake(conn)
        kind, _body = read_packet(conn)
        assert kind == 10
        time.sleep(0.3)  # the caller must still be waiting
        order.append("unsuback sent")
        conn.sendall(early + b"\xb0\x04\x00\x02\x00\x00")
        read_packet(conn)  # the PUBACK

    with broker(script) as (port, errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])
        s.unsubscribe(["fleet/+/telemetry"])
        order.append("unsubscribe returned")
        got = s.receive(1.0, 10)
        s.ack(got.mids)
        s.close()
    assert not errors, errors
    assert order == ["unsuback sent", "unsubscribe returned"]
    assert got.payloads == [b"in flight"] and got.mids == [8]


def test_a_write_the_broker_does_not_take_ends_the_session_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_session, "WRITE_TIMEOUT_S", 0.5)
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        handshake(conn)
        release.wait(10)  # never reads: the socket buffers fill

    mids = list(itertools.islice(itertools.cycle(range(1, 65536)), 500_000))  # 2 MB of PUBACKs
    with broker(stall) as (port, _errors):
        s = session(port)
        s.connect([("fleet/+/telemetry", 1)])
        s._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[union-attr]
        started = time.monotonic()
        with pytest.raises(SessionError, match="took no data"):
            s.ack(mids)
        release.set()
    assert time.monotonic() - started < 5


def test_a_disconnect_from_the_broker_and_a_bad_fixed_header_end_the_session() -> None:
    for stream, match in ((b"\xe0\x01\x8b", "0x8b"), (b"\xd1\x00", "flags"), (b"\x40\x02\x00\x01", "type 4")):

        def script(conn: socket.socket, stream: bytes = stream) -> None:
            handshake(conn)
            conn.sendall(stream)
            time.sleep(0.2)

        with broker(script) as (port, _errors):
            s = session(port)
            s.connect([("fleet/+/telemetry", 1)])
            with pytest.raises(SessionError, match=match):
                s.receive(1.0, 10)


def test_the_session_speaks_tls_and_reads_records_split_across_tls_records(tmp_path: Path) -> None:
    """1,000 messages over TLS (many TLS records, each recv returns one), and one larger than a record."""
    files = tls.tls_files(tmp_path)
    tls.ensure(files, None, datetime.now(UTC))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    stream = b"".join(publish(f"fleet/d{i % 7}/telemetry", b"p" * 100, mid=i + 1) for i in range(1000))
    stream += publish("fleet/big/telemetry", b"B" * 40_000, mid=1001)
    acked: list[int] = []

    def script(raw: socket.socket) -> None:
        with server_ctx.wrap_socket(raw, server_side=True) as conn:
            handshake(conn)
            conn.sendall(stream)
            while len(acked) < 1001:
                kind, body = read_packet(conn)
                assert kind == 4
                acked.append(struct.unpack("!H", body)[0])

    with broker(script) as (port, errors):
        s = MqttSession("127.0.0.1", port, "gw", "svc", "pw", tls=ssl.create_default_context(cafile=files.ca_cert))
        s.connect([("fleet/+/telemetry", 1)])
        got: list[int] = []
        payloads: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 1001 and time.monotonic() < deadline:
            inbound = s.receive(0.5, 300)
            got += inbound.mids
            payloads += inbound.payloads
            s.ack(inbound.mids)
        s.close()
    assert not errors, errors
    assert got == list(range(1, 1002)) and payloads[-1] == b"B" * 40_000
    assert acked == got


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ours, theirs = tls.tls_files(tmp_path / "ours"), tls.tls_files(tmp_path / "theirs")
    now = datetime.now(UTC)
    tls.ensure(ours, None, now)
    tls.ensure(theirs, None, now)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(theirs.server_cert, theirs.server_key)

    def script(raw: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            server_ctx.wrap_socket(raw, server_side=True).close()

    with broker(script) as (port, _errors):
        s = MqttSession("127.0.0.1", port, "gw", "svc", "pw", tls=ssl.create_default_context(cafile=ours.ca_cert))
        with pytest.raises(SessionError, match="TLS"):
            s.connect([("fleet/+/telemetry", 1)])
