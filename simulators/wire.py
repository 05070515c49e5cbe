"""A minimal MQTT 3.1.1 QoS 1 publisher for load mode: pre-encoded packets, written in bulk.

paho spends about 100 µs of Python per QoS 1 message (one `send` per packet, properties and
reason-code objects per PUBACK), which caps a publisher process near 5,000 messages/s on this
machine. Load mode needs the broker and the gateway to be the bottleneck, not the generator, so it
encodes PUBLISH packets up front and writes them in large chunks, keeping at most `window` of
them unacknowledged; a reader thread counts the PUBACKs. It does CONNECT, PUBLISH at QoS 1 and
DISCONNECT, nothing else: the device simulator uses aiomqtt.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence

from kernel import mqtt_codec as codec

CONNACK, PUBACK = codec.CONNACK, codec.PUBACK


class WireError(ConnectionError):
    """The broker refused us or the connection broke."""


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    """MQTT 3.1.1 CONNECT with clean session."""
    return codec.connect_packet(client_id, username, password, keepalive=keepalive, clean=True, version=codec.V311)


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """PUBLISH, QoS 1, not retained; `mid` must be 1..65535."""
    return codec.publish_packet(topic, payload, mid)


def open_socket(host: str, port: int, tls: ssl.SSLContext | None, timeout: float = 30) -> socket.socket:
    """A connected socket to the broker, in TLS when `tls` is given (the name checked against `host`)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise WireError(f"cannot connect to {host}:{port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=host)
    except OSError as exc:
        sock.close()
        raise WireError(f"TLS with {host}:{port} failed: {exc}") from None


class QoS1Publisher:
    """One connection that publishes a list of (topic, payload) and waits for every PUBACK."""

    def __init__(
        self, host: str, port: int, client_id: str, username: str | None, password: str | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self._sock = open_socket(host, port, tls)
        # OpenSSL allows one thread at a time on a connection: under TLS the reader and the writer take turns
        self._tls = tls is not None
        self._turn: contextlib.AbstractContextManager[object] = (
            threading.Lock() if tls is not None else contextlib.nullcontext()
        )
        self._sock.sendall(connect_packet(client_id, username, password, keepalive=600))
        kind, body = self._read_packet()
        if kind != CONNACK or len(body) < 2 or body[1] != 0:
            code = body[1] if kind == CONNACK and len(body) > 1 else -1
            raise WireError(f"broker refused the connection (CONNACK code {code})")
        self._sock.settimeout(None if tls is None else 30.0)  # TLS: a read in its turn never blocks for long
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
            with self._turn:
                self._sock.sendall(packets)
            sent += n
        with self._cond:
            if not self._cond.wait_for(lambda: self._failed or self._acked >= sent, 120):
                raise WireError(f"only {self._acked} of {sent} acknowledged after 120 s")
        return first, time.time()

    def close(self) -> None:
        try:
            with self._turn:
                self._sock.sendall(codec.DISCONNECT_PACKET)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)

    def _read_packet(self) -> tuple[int, bytes]:
        data = b""
        while True:
            j, end = codec.frame(data, 0, 1 << 20)
            if j >= 0:
                return data[0] >> 4, data[j:end]
            part = self._sock.recv(4096)
            if not part:
                raise WireError("connection closed by the broker")
            data += part

    def _read_acks(self) -> None:
        """Count PUBACKs. Reads the socket in big gulps: the broker acks in bursts of 4-byte packets."""
        pending = b""
        try:
            while True:
                data = self._recv()
                if data is None:
                    continue
                if not data:
                    raise WireError("connection closed by the broker")
                pending += data
                count, used = codec.count_pubacks(pending)
                pending = pending[used:]
                if count:
                    with self._cond:
                        self._acked += count
                        self._cond.notify_all()
        except (OSError, WireError, codec.MalformedPacket) as exc:
            with self._cond:
                self._failed = str(exc) or type(exc).__name__
                self._cond.notify_all()

    def _recv(self) -> bytes | None:
        """Plain: a blocking read. TLS: wait outside the writer's turn, then read in it (None: nothing yet)."""
        if not self._tls:
            return self._sock.recv(65536)
        assert isinstance(self._sock, ssl.SSLSocket)
        if not self._sock.pending():
            readable, _, _ = select.select([self._sock], [], [], 0.2)
            if not readable:
                return None
        with self._turn:
            return self._sock.recv(65536)
