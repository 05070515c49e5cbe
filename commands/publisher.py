"""The command service's way out: commands published in bulk over one or more MQTT 5 connections.

Why not paho: publishing a burst of 10,000 commands through one paho client cost more Python time
than everything else the service did (paho walks its whole table of unacknowledged messages on every
PUBACK, sends a packet per `send` and wakes its network thread per publish). Here a round's commands
are framed with the shared codec (`kernel.mqtt_codec`), each with its Message Expiry Interval, and
written in one `sendall` per connection; a reader thread per connection only counts PUBACKs.

Order: a device is always published on the same connection (`lane`, a stable hash of its id), and
MQTT keeps one connection's messages to one topic in order, so several connections never reorder a
device's commands. What a connection could not take (broken, or its window of unacknowledged
publishes stayed full) is not queued here: the command is stored as sent already, and its ack
timeout sends it again, as after any lost packet. A broken connection is opened again on the next
publish, at most once per `RECONNECT_S`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from kernel import mqtt_codec as codec
from kernel.ratelimit import RateLimitedLog
from kernel.settings import MqttTarget

log = logging.getLogger(__name__)

WINDOW = 10_000  # unacknowledged publishes per connection (less if the broker's Receive Maximum says so)
WINDOW_WAIT_S = 5.0  # how long a publish waits for room in the window before it is left to the resend
RECONNECT_S = 1.0
KEEPALIVE_S = 60
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0


class PublishError(ConnectionError):
    """A connection the broker refused or broke."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message on its way: the device it is for, its topic, its bytes, and the seconds it may live at
    the broker (MQTT 5 Message Expiry Interval; 0: no expiry)."""

    device_id: str
    topic: str
    payload: bytes
    expiry_s: int


def lane(device_id: str, lanes: int) -> int:
    """The connection a device's commands always take (stable across restarts and processes)."""
    return zlib.crc32(device_id.encode()) % lanes if lanes > 1 else 0


class _Connection:
    """One MQTT 5 connection that only publishes at QoS 1. Writes come from the publishing thread,
    PUBACKs and PINGRESPs are read by its own thread; a lock gives turns on the socket to writes
    (and, under TLS, where OpenSSL allows one thread at a time, to reads)."""

    def __init__(self, target: MqttTarget, client_id: str, window: int) -> None:
        self._target = target
        self._client_id = client_id
        self._window = window
        self._sock: socket.socket | None = None
        self._turn = threading.Lock()
        self._room = threading.Condition()
        self._inflight = 0
        self._mid = 0
        self._last_sent = 0.0
        self._last_try = 0.0
        self._failed: str | None = None
        self._reader: threading.Thread | None = None
        self._limit = window
        self.refused = 0  # PUBACKs with a failure reason code (e.g. not authorized)

    @property
    def up(self) -> bool:
        return self._sock is not None and self._failed is None

    def open(self) -> None:
        self._last_try = time.monotonic()
        target = self._target
        try:
            sock = socket.create_connection((target.host, target.port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = target.ssl_context()
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=target.host)
        except OSError as exc:
            raise PublishError(f"cannot reach the broker at {target.host}:{target.port}: {exc}") from None
        # Clean start, session gone on disconnect: nothing unacknowledged is resent by the broker
        # session; the service's ack timeout resends instead.
        sock.sendall(codec.connect_packet(self._client_id, target.username, target.password,
                                          keepalive=KEEPALIVE_S, clean=True))  # fmt: skip
        first, body, rest = _read_packet(sock)
        if first >> 4 != codec.CONNACK:
            sock.close()
            raise PublishError(f"expected CONNACK, got packet type {first >> 4}")
        try:
            connack = codec.parse_connack(body)
        except codec.MalformedPacket as exc:
            sock.close()
            raise PublishError(f"malformed CONNACK: {exc}") from None
        if connack.reason != 0:
            sock.close()
            raise PublishError(f"broker refused the connection (reason code 0x{connack.reason:02x})")
        window = int(connack.properties.get(codec.RECEIVE_MAXIMUM, 65_535))
        sock.settimeout(WRITE_TIMEOUT_S)  # reads wait in select(); a write the broker does not take fails
        with self._room:
            self._sock, self._failed, self._inflight = sock, None, 0
            self._limit = max(1, min(self._window, window))
        self._last_sent = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(sock, rest, tls is not None),
                                        name=f"{self._client_id}-acks", daemon=True)  # fmt: skip
        self._reader.start()

    def due_for_retry(self) -> bool:
        return time.monotonic() - self._last_try >= RECONNECT_S

    def publish(self, items: Sequence[Outgoing]) -> int:
        """Write as many of `items` as the window takes (waiting up to `WINDOW_WAIT_S` for room), in
        order; returns how many were written. Raises `PublishError` if the connection breaks."""
        done = 0
        while done < len(items):
            with self._room:
                if not self._room.wait_for(lambda: self._failed or self._inflight < self._limit, WINDOW_WAIT_S):
                    return done
                if self._failed:
                    raise PublishError(self._failed)
                n = min(len(items) - done, self._limit - self._inflight)
                self._inflight += n
            chunk = items[done : done + n]
            mids = [(self._mid + i) % 65_535 + 1 for i in range(n)]
            self._mid = (self._mid + n) % 65_535
            data = b"".join(
                codec.publish_packet(o.topic, o.payload, mid, version=codec.V5,
                                     properties=codec.prop_u32(codec.MESSAGE_EXPIRY, o.expiry_s) if o.expiry_s else b"")
                for o, mid in zip(chunk, mids, strict=True)
            )  # fmt: skip
            self._write(data)
            done += n
        return done

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise PublishError("not connected")
        try:
            with self._turn:
                sock.sendall(data)
        except OSError as exc:
            self._fail(f"send failed: {exc}")
            raise PublishError(f"send failed: {exc}") from None
        self._last_sent = time.monotonic()

    def _read(self, sock: socket.socket, pending: bytes, tls: bool) -> None:
        """Count PUBACKs until the connection ends; ping when nothing was written for a while."""
        try:
            while self._sock is sock:
                readable = select.select([sock], [], [], 1.0)[0] or (tls and sock.pending())  # type: ignore[attr-defined]
                if time.monotonic() - self._last_sent > KEEPALIVE_S / 2:
                    self._write(codec.PINGREQ_PACKET)
                if not readable:
                    continue
                with self._turn if tls else contextlib.nullcontext():
                    try:
                        data = sock.recv(1 << 16)
                    except (TimeoutError, BlockingIOError):
                        continue
                if not data:
                    raise PublishError("connection closed by the broker")
                pending = self._take(pending + data)
        except (OSError, PublishError, codec.MalformedPacket) as exc:
            if self._sock is sock:
                self._fail(str(exc) or type(exc).__name__)

    def _take(self, data: bytes) -> bytes:
        acked, i = 0, 0
        while True:
            j, end = codec.frame(data, i, 1 << 20)
            if j < 0:
                break
            kind = data[i] >> 4
            if kind == codec.PUBACK:
                acked += 1
                if end - j > 2 and data[j + 2] >= 0x80:  # MQTT 5 reason code: refused
                    self.refused += 1
                    _warn.warning("refused", "commands: broker refused a command (PUBACK reason 0x%02x)", data[j + 2])
            elif kind == codec.DISCONNECT:
                raise PublishError(f"broker disconnected us (reason code 0x{data[j] if end > j else 0:02x})")
            i = end
        if acked:
            with self._room:
                self._inflight = max(0, self._inflight - acked)
                self._room.notify_all()
        return data[i:]

    def _fail(self, why: str) -> None:
        with self._room:
            if self._failed is None:
                self._failed = why
                _warn.warning("broken", "commands: publishing connection %s lost: %s", self._client_id, why)
            self._room.notify_all()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError), self._turn:
            sock.sendall(codec.DISCONNECT_PACKET)
        self._sock = None
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        if self._reader is not None:
            self._reader.join(5)


_warn = RateLimitedLog(log)


def _read_packet(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One whole packet while connecting: (first byte, body, bytes read past it)."""
    data = b""
    while True:
        j, end = codec.frame(data, 0, 1 << 20)
        if j >= 0:
            return data[0], data[j:end], data[end:]
        part = sock.recv(4096)
        if not part:
            raise PublishError("connection closed by the broker")
        data += part


class CommandPublisher:
    """`connections` publishing connections, client ids `<client_id>-p<n>`; each device on its own lane."""

    def __init__(self, target: MqttTarget, client_id: str, connections: int = 1, window: int = WINDOW) -> None:
        if connections < 1:
            raise ValueError("at least one publishing connection")
        self._lanes = [_Connection(target, f"{client_id}-p{i}", window) for i in range(connections)]

    def open(self) -> None:
        """Connect every lane now (else each connects on its first publish); raises `PublishError`."""
        for conn in self._lanes:
            if not conn.up:
                conn.open()

    def publish(self, items: Sequence[Outgoing]) -> int:
        """Publish in the order given per device; returns how many were handed to the broker. The
        rest are left to the caller's resend (a connection down, or its window full for too long)."""
        by_lane: list[list[Outgoing]] = [[] for _ in self._lanes]
        n = len(self._lanes)
        for item in items:
            by_lane[lane(item.device_id, n)].append(item)
        written = 0
        for conn, chunk in zip(self._lanes, by_lane, strict=True):
            if not chunk:
                continue
            try:
                if not conn.up:
                    if not conn.due_for_retry():
                        continue
                    conn.open()
                written += conn.publish(chunk)
            except PublishError as exc:
                _warn.warning("publish", "commands: %d commands not published now (resent later): %s", len(chunk), exc)
        return written

    @property
    def refused(self) -> int:
        return sum(c.refused for c in self._lanes)

    def close(self) -> None:
        for conn in self._lanes:
            conn.close()
