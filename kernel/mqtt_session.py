"""The gateway's MQTT 5 connection: one persistent session that receives in bulk and acknowledges in bulk.

Why not paho: paho's network loop costs Python time per QoS 1 message (one `recv` per packet header,
a `Properties` object per message, one `send` per PUBACK, and a wake-up of the network thread for
every acknowledgement sent from another thread). This session reads the socket in large chunks,
parses every complete packet in one pass and sends the PUBACKs of a stored batch in one write.
`fleet bench session` measures the whole pipeline with both (docs/performance.md has the figures).

It speaks only what the gateway needs: CONNECT (clean start off, session expiry, receive maximum,
maximum packet size), SUBSCRIBE (shared subscriptions included), UNSUBSCRIBE (waiting for UNSUBACK),
PUBLISH received at QoS 0 or 1, PUBACK, PINGREQ and DISCONNECT, over TCP or TLS. CONNACK's
properties are obeyed: the Server Keep Alive replaces ours, the broker's Maximum Packet Size bounds
what we send, a broker without shared or wildcard subscriptions or without QoS 1 is refused (the
gateway cannot work on it). Receive Maximum and Topic Alias Maximum limit the broker's view of *our*
publishing: this session never publishes and never sends an alias. The broker never sends us topic
aliases (we announce a maximum of 0) and never QoS 2 (we subscribe at QoS 1 at most); anything
malformed or unexpected ends the connection with `SessionError`, the caller reconnects and the
persistent session redelivers what was not acknowledged.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from kernel import mqtt_codec as codec
from kernel.mqtt_codec import MalformedPacket

RECV_BYTES = 1 << 20
MAX_PACKET_BYTES = 1 << 20  # announced in CONNECT: the broker drops larger messages instead of sending them
WRITE_TIMEOUT_S = 10.0  # a write the broker does not take within this ends the connection
MID_SUBSCRIBE, MID_UNSUBSCRIBE = 1, 2


class SessionError(ConnectionError):
    """The broker refused us, broke the connection or spoke something this session does not.

    `received`: complete messages read before the connection broke. The broker that will see our
    next connection may not redeliver them (a broker killed and restarted from an older snapshot),
    so the caller stores them, unacknowledged, rather than drop them."""

    received: Inbound | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """What one `receive()` returned: parallel lists, cheaper than an object per message."""

    topics: list[str]
    payloads: list[bytes]
    mids: list[int]  # 0 for QoS 0 (nothing to acknowledge)

    def __len__(self) -> int:
        return len(self.topics)


def connect_packet(
    client_id: str, username: str | None, password: str | None, *, keepalive: int, session_expiry_s: int,
    receive_maximum: int, maximum_packet_size: int = MAX_PACKET_BYTES,
) -> bytes:  # fmt: skip
    # Clean start stays off: the broker keeps our subscriptions and unacknowledged messages.
    props = (
        codec.prop_u32(codec.SESSION_EXPIRY, session_expiry_s)
        + codec.prop_u16(codec.RECEIVE_MAXIMUM, receive_maximum)
        + codec.prop_u32(codec.MAXIMUM_PACKET_SIZE, maximum_packet_size)
    )
    return codec.connect_packet(client_id, username, password, keepalive=keepalive, clean=False, properties=props)


class MqttSession:
    """One connection of a persistent MQTT 5 session. Not thread-safe: one thread owns it.

    `connect()` raises `SessionError`; so do `receive()`, `ack()` and `unsubscribe()` once the
    connection is broken, after which the object is spent and the caller makes a new one.
    `tls` (an `ssl.SSLContext`) wraps the connection in TLS, checking the broker's certificate
    against `host`.
    """

    def __init__(
        self, host: str, port: int, client_id: str, username: str | None, password: str | None, *,
        keepalive: int = 30, session_expiry_s: int = 7 * 24 * 3600, receive_maximum: int = 20_000,
        maximum_packet_size: int = MAX_PACKET_BYTES, tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self._address = (host, port)
        self._client_id = client_id
        self._credentials = (username, password)
        self._keepalive = keepalive
        self._expiry = session_expiry_s
        self._receive_maximum = receive_maximum
        self._max_in = maximum_packet_size
        self._max_out = codec.VARINT_MAX + 5  # until CONNACK says otherwise
        self._tls = tls
        self._sock: socket.socket | None = None
        self._pending = b""
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._topics: dict[bytes, str] = {}
        self.session_present = False

    # -- connection ---------------------------------------------------------------------------------
    def connect(self, filters: Sequence[tuple[str, int]], timeout: float = 10.0) -> None:
        host, port = self._address
        try:
            sock = socket.create_connection(self._address, timeout=timeout)
        except OSError as exc:
            raise SessionError(f"cannot reach the broker at {host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=host)  # handshake within `timeout`
            except OSError as exc:  # ssl.SSLError (a certificate we do not trust) included
                sock.close()
                raise SessionError(f"TLS with the broker at {host}:{port} failed: {exc}") from None
        self._sock = sock
        username, password = self._credentials
        self._send(connect_packet(self._client_id, username, password, keepalive=self._keepalive,
                                  session_expiry_s=self._expiry, receive_maximum=self._receive_maximum,
                                  maximum_packet_size=self._max_in))  # fmt: skip
        first, body, _raw = self._read_one(timeout)
        if first != codec.FIXED_FIRST[codec.CONNACK]:
            self._broken(f"expected CONNACK, got packet type {first >> 4}")
        try:
            connack = codec.parse_connack(body)
        except MalformedPacket as exc:
            self._broken(f"malformed CONNACK from the broker: {exc}")
        if connack.reason != 0:
            why = connack.properties.get(codec.REASON_STRING, "")
            self._broken(f"broker refused the connection (reason code 0x{connack.reason:02x}) {why}".rstrip())
        self.session_present = connack.session_present
        self._obey(connack.properties, filters)
        self._send(codec.subscribe_packet(MID_SUBSCRIBE, filters))
        codes = self._await_ack(codec.SUBACK, MID_SUBSCRIBE, timeout)
        refused = [f for (f, _q), code in zip(filters, codes, strict=False) if code >= 0x80]
        if refused or len(codes) != len(filters):
            self._broken(f"broker refused the subscriptions {refused or list(filters)}")
        sock.setblocking(False)

    def _obey(self, props: dict[int, int | str | bytes], filters: Sequence[tuple[str, int]]) -> None:
        """CONNACK's properties (MQTT 5 §3.2.2.3): what the broker allows and how it wants us to behave."""
        if (keepalive := props.get(codec.SERVER_KEEP_ALIVE)) is not None:
            self._keepalive = int(keepalive)
        if (expiry := props.get(codec.SESSION_EXPIRY)) is not None:
            self._expiry = int(expiry)
        if (max_out := props.get(codec.MAXIMUM_PACKET_SIZE)) is not None:
            if not max_out:
                self._broken("CONNACK gives a Maximum Packet Size of 0")
            self._max_out = int(max_out)
        if props.get(codec.MAXIMUM_QOS, 2) == 0 and any(q for _f, q in filters):
            self._broken("the broker allows only QoS 0; the gateway needs QoS 1 to lose nothing")
        if props.get(codec.SHARED_AVAILABLE, 1) == 0 and any(f.startswith("$share/") for f, _q in filters):
            self._broken("the broker does not offer shared subscriptions")
        if props.get(codec.WILDCARD_AVAILABLE, 1) == 0 and any("+" in f or "#" in f for f, _q in filters):
            self._broken("the broker does not offer wildcard subscriptions")
        if codec.RECEIVE_MAXIMUM in props and not props[codec.RECEIVE_MAXIMUM]:
            self._broken("CONNACK gives a Receive Maximum of 0")

    def _await_ack(self, kind: int, mid: int, timeout: float) -> bytes:
        """Wait for SUBACK/UNSUBACK `mid`; messages that arrive first are kept for `receive()`."""
        held: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            first, body, raw = self._read_one(max(0.0, deadline - time.monotonic()))
            if first >> 4 == codec.PUBLISH:
                held.append(raw)
                continue
            if first == codec.FIXED_FIRST[codec.PINGRESP]:
                continue
            if first != codec.FIXED_FIRST[kind]:
                self._control(first, body)
                self._broken(f"expected packet type {kind}, got {first >> 4}")
            try:
                got, codes = codec.parse_ack(body)
            except MalformedPacket as exc:
                self._broken(f"malformed acknowledgement from the broker: {exc}")
            if got == mid:
                self._pending = b"".join(held) + self._pending
                return codes

    def close(self) -> None:
        """Leave the session open at the broker (a normal DISCONNECT keeps a persistent session)."""
        self._disconnect(codec.DISCONNECT_PACKET)

    def unsubscribe(self, filters: Sequence[str], timeout: float = 10.0) -> None:
        """The broker stops assigning new messages to this session; those already queued still come.
        Returns once the broker has acknowledged it (UNSUBACK)."""
        sock = self._require()
        sock.settimeout(timeout)
        self._send(codec.unsubscribe_packet(MID_UNSUBSCRIBE, filters))
        codes = self._await_ack(codec.UNSUBACK, MID_UNSUBSCRIBE, timeout)
        sock.setblocking(False)
        # 0x11: there was no such subscription (already gone): nothing more to stop
        refused = [f for f, code in zip(filters, codes, strict=False) if code >= 0x80]
        if refused or len(codes) != len(filters):
            self._broken(f"broker refused to unsubscribe {refused or list(filters)}")

    def end(self) -> None:
        """Close and delete the session at the broker, with anything still queued in it."""
        self._disconnect(codec.END_SESSION_PACKET)

    def _disconnect(self, packet: bytes) -> None:
        """Send DISCONNECT (best effort: the broker may be gone already) and close the socket."""
        if self._sock is None:
            return
        try:
            self._sock.settimeout(1.0)
            self._sock.sendall(packet)
        except OSError:
            pass
        self._sock.close()
        self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def keepalive(self) -> int:
        """The keepalive in force: ours, or the broker's Server Keep Alive."""
        return self._keepalive

    # -- traffic ------------------------------------------------------------------------------------
    def receive(self, timeout: float, max_messages: int) -> Inbound:
        """Everything complete that has arrived (up to about `max_messages`), waiting at most
        `timeout` for the first byte. Sends a PINGREQ when the connection has been quiet."""
        sock = self._require()
        inbound = Inbound([], [], [])
        self.keep_alive()
        if self._pending and self._parse(inbound, max_messages):
            return inbound
        # TLS may hold decrypted bytes that select() cannot see
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not buffered:
            readable, _, _ = select.select([sock], [], [], 0 if inbound.topics else timeout)
            if not readable:
                if not inbound.topics:
                    self._check_heard()
                return inbound
        try:
            while len(inbound) < max_messages:
                try:
                    data = sock.recv(RECV_BYTES)  # TLS: at most one record (16 KiB) per call
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except OSError as exc:
                    self._broken(f"connection lost: {exc}")
                if not data:
                    self._broken("connection closed by the broker")
                self._last_heard = time.monotonic()
                self._pending = self._pending + data if self._pending else data
                if self._parse(inbound, max_messages):
                    break
        except SessionError as exc:
            exc.received = inbound
            raise
        return inbound

    def _parse(self, inbound: Inbound, max_messages: int) -> bool:
        """Parse complete packets from `_pending` into `inbound`; True once `max_messages` is reached."""
        controls: list[tuple[int, bytes]] = []
        try:
            used = codec.parse_inbound(
                self._pending, inbound.topics, inbound.payloads, inbound.mids, controls,
                max_messages=max_messages, max_size=self._max_in, cache=self._topics,
            )  # fmt: skip
        except MalformedPacket as exc:
            self._broken(f"malformed packet from the broker: {exc}")
        self._pending = self._pending[used:]
        for first, body in controls:
            self._control(first, body)
        return len(inbound) >= max_messages

    def ack(self, mids: Iterable[int]) -> None:
        data = codec.puback_packets(m for m in mids if m)
        if data:
            self._send(data)

    # -- internals ----------------------------------------------------------------------------------
    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if first != codec.FIXED_FIRST.get(kind):
            self._broken(f"malformed packet from the broker: packet type {kind} with flags 0x{first & 15:x}")
        if kind == codec.PINGRESP and not body:
            return
        if kind in (codec.SUBACK, codec.UNSUBACK):
            return  # a late duplicate; both were awaited when they mattered
        if kind == codec.DISCONNECT:
            reason = body[0] if body else 0
            self._broken(f"broker disconnected us (reason code 0x{reason:02x})")
        self._broken(f"unexpected packet type {kind} from the broker")

    def keep_alive(self) -> None:
        """Send a PINGREQ if nothing was sent for half the keepalive (also while the caller is stuck)."""
        if self._keepalive and time.monotonic() - self._last_sent > self._keepalive / 2:
            self._send(codec.PINGREQ_PACKET)

    def _check_heard(self) -> None:
        if self._keepalive and time.monotonic() - self._last_heard > 1.5 * self._keepalive:
            self._broken("broker silent for longer than the keepalive")

    def _send(self, data: bytes) -> None:
        """Write all of `data` within `WRITE_TIMEOUT_S`, or end the connection."""
        sock = self._require()
        if len(data) > self._max_out and data[0] >> 4 != codec.PUBACK:  # PUBACKs go in bulk, 4 bytes each
            self._broken(f"a {len(data)}-byte packet is above the broker's Maximum Packet Size {self._max_out}")
        view, deadline = memoryview(data), time.monotonic() + WRITE_TIMEOUT_S
        try:
            while view:
                try:
                    view = view[sock.send(view) :]
                    continue
                except (BlockingIOError, ssl.SSLWantWriteError):
                    wait_read = False
                except ssl.SSLWantReadError:
                    wait_read = True
                left = deadline - time.monotonic()
                if left <= 0:
                    self._broken(f"the broker took no data for {WRITE_TIMEOUT_S:.0f} s")
                select.select([sock] if wait_read else [], [] if wait_read else [sock], [], left)
        except SessionError:
            raise
        except OSError as exc:  # socket.timeout in blocking mode included
            self._broken(f"send failed: {exc}")
        self._last_sent = time.monotonic()

    def _read_one(self, timeout: float) -> tuple[int, bytes, bytes]:
        """One whole packet while connecting: (first byte, body, the packet's bytes)."""
        sock = self._require()
        deadline = time.monotonic() + timeout
        while True:
            try:
                j, end = codec.frame(self._pending, 0, self._max_in)
            except MalformedPacket as exc:
                self._broken(f"malformed packet from the broker: {exc}")
            if j >= 0:
                raw, self._pending = self._pending[:end], self._pending[end:]
                self._last_heard = time.monotonic()
                return raw[0], raw[j:], raw
            left = deadline - time.monotonic()
            if left <= 0:
                self._broken("no answer from the broker")
            sock.settimeout(left)
            try:
                data = sock.recv(RECV_BYTES)
            except OSError as exc:
                self._broken(f"connection lost: {exc}")
            if not data:
                self._broken("connection closed by the broker")
            self._pending += data

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise SessionError("not connected")
        return self._sock

    def _broken(self, why: str) -> NoReturn:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        raise SessionError(why)
