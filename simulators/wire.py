"""A minimal MQTT 3.1.1 QoS 1 publisher for load mode: pre-encoded packets, written in bulk.

paho spends about 100 µs of Python per QoS 1 message (one `send` per packet, properties and
reason-code objects per PUBACK), which caps a publisher process near 5,000 messages/s on this
machine. Load mode needs the broker and the gateway to be the bottleneck, not the generator, so it
encodes PUBLISH packets up front and writes them in large chunks, keeping at most `window` of
them unacknowledged; a reader thread counts the PUBACKs. It does CONNECT, PUBLISH at QoS 1 and
DISCONNECT, nothing else: the device simulator uses aiomqtt.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence

from gateway.mqtt_session import connect_payload, encode_string, encode_varint

CONNACK, PUBACK = 2, 4


class WireError(ConnectionError):
    """The broker refused us or the connection broke."""


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    flags, payload = connect_payload(client_id, username, password)
    flags |= 0x02  # clean session
    body = encode_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return b"\x10" + encode_varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """PUBLISH, QoS 1, not retained; `mid` must be 1..65535."""
    body = encode_string(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + encode_varint(len(body)) + body


class QoS1Publisher:
    """One connection that publishes a list of (topic, payload) and waits for every PUBACK."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None, password: str | None) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=30)
        except OSError as exc:
            raise WireError(f"cannot connect to {host}:{port}: {exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(client_id, username, password, keepalive=600))
        kind, body = self._read_packet()
        if kind != CONNACK or len(body) < 2 or body[1] != 0:
            code = body[1] if kind == CONNACK and len(body) > 1 else -1
            raise WireError(f"broker refused the connection (CONNACK code {code})")
        self._sock.settimeout(None)
        self._acked = 0
        self._cond = threading.Condition()
        self._failed: str | None = None
        self._reader = threading.Thread(target=self._read_acks, daemon=True)
        self._reader.start()

    @property
    def acked(self) -> int:
        return self._acked

    def publish_all(
        self, messages: Sequence[tuple[str, bytes]], rate: float = 0.0, window: int = 4000, chunk: int = 200
    ) -> tuple[float, float]:
        """Publish everything (paced at `rate` messages/s if > 0); returns (first write, last ack)."""
        if rate > 0:
            chunk = max(1, min(chunk, int(rate / 100)))  # paced writes every 10 ms or so
        first = time.time()
        start = time.perf_counter()
        sent = 0
        while sent < len(messages):
            n = min(chunk, len(messages) - sent)
            if rate > 0:
                ahead = start + sent / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            with self._cond:
                room = sent + n - window  # acks needed before this chunk fits the window
                if not self._cond.wait_for(lambda room=room: self._failed or self._acked >= room, 60):
                    raise WireError("no PUBACK for 60 s")
                if self._failed:
                    raise WireError(self._failed)
            packets = b"".join(
                publish_packet(t, p, (sent + i) % 65535 + 1) for i, (t, p) in enumerate(messages[sent : sent + n])
            )
            self._sock.sendall(packets)
            sent += n
        with self._cond:
            if not self._cond.wait_for(lambda: self._failed or self._acked >= sent, 120):
                raise WireError(f"only {self._acked} of {sent} acknowledged after 120 s")
        return first, time.time()

    def close(self) -> None:
        try:
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self._sock.recv(n - len(buf))
            if not part:
                raise WireError("connection closed by the broker")
            buf += part
        return bytes(buf)

    def _read_packet(self) -> tuple[int, bytes]:
        kind = self._read_exact(1)[0] >> 4
        length, shift = 0, 0
        while True:
            digit = self._read_exact(1)[0]
            length |= (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        return kind, self._read_exact(length) if length else b""

    def _read_acks(self) -> None:
        """Count PUBACKs. Reads the socket in big gulps: the broker acks in bursts of 4-byte packets."""
        pending = b""
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise WireError("connection closed by the broker")
                pending += data
                count, pending = _count_pubacks(pending)
                if count:
                    with self._cond:
                        self._acked += count
                        self._cond.notify_all()
        except (OSError, WireError) as exc:
            with self._cond:
                self._failed = str(exc) or type(exc).__name__
                self._cond.notify_all()


def _count_pubacks(data: bytes) -> tuple[int, bytes]:
    """PUBACKs in `data` and the unparsed tail (other packet types are skipped)."""
    count, i = 0, 0
    while i + 2 <= len(data):
        kind = data[i] >> 4
        length, shift, j = 0, 0, i + 1
        while j < len(data):
            digit = data[j]
            length |= (digit & 0x7F) << shift
            shift += 7
            j += 1
            if not digit & 0x80:
                break
        else:
            break
        if j + length > len(data):
            break
        count += kind == PUBACK
        i = j + length
    return count, data[i:]
