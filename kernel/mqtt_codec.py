"""The one MQTT packet codec: encoders for what our clients send, parsers for what the broker sends.

Pure bytes in, bytes or values out (no sockets), shared by the gateway's session
(`kernel/mqtt_session.py`), the simulators' load publisher (`simulators/wire.py`), the stack's
readiness probe (`localstack/mosquitto.py`), the benchmarks and the tests. MQTT 3.1.1 and 5 differ
only where a function takes `version`.

Every parser is bounded by the packet it reads: a length field that points past its packet's end
raises `MalformedPacket`, never reads the next packet's bytes, and so does any other broken field
(QoS 3, a variable byte integer longer than four bytes, a packet above the announced maximum).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 10, 11, 12, 13, 14, 15
V311, V5 = 4, 5
VARINT_MAX = 268_435_455  # four 7-bit digits
# fixed-header first bytes the broker may send with no flags (MQTT 5 §2.1.3); PUBLISH carries its own
FIXED_FIRST = {CONNACK: 0x20, PUBACK: 0x40, SUBACK: 0x90, UNSUBACK: 0xB0, PINGRESP: 0xD0, DISCONNECT: 0xE0, AUTH: 0xF0}

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # reason "normal" left implicit; a persistent session stays at the broker
END_SESSION_PACKET = b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"  # MQTT 5: normal, session expiry now

# MQTT 5 property identifiers (§2.2.2.2) and how each is encoded
MESSAGE_EXPIRY = 0x02
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE, REASON_STRING = 0x11, 0x12, 0x13, 0x1F
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS, RETAIN_AVAILABLE = 0x21, 0x22, 0x23, 0x24, 0x25
USER_PROPERTY, MAXIMUM_PACKET_SIZE, WILDCARD_AVAILABLE, SUBSCRIPTION_ID_AVAILABLE = 0x26, 0x27, 0x28, 0x29
SHARED_AVAILABLE = 0x2A
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_TEXT = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}


class MalformedPacket(ValueError):
    """Bytes that are not a well-formed MQTT packet, or one this client never accepts (QoS 3)."""


# -- encoding -------------------------------------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    """MQTT variable byte integer (§1.5.5)."""
    if not 0 <= n <= VARINT_MAX:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def prop_u16(ident: int, value: int) -> bytes:
    return bytes([ident]) + struct.pack("!H", value)


def prop_u32(ident: int, value: int) -> bytes:
    return bytes([ident]) + struct.pack("!I", value)


def connect_packet(
    client_id: str, username: str | None, password: str | None, *, keepalive: int, clean: bool,
    version: int = V5, properties: bytes = b"",
) -> bytes:  # fmt: skip
    """CONNECT for MQTT 3.1.1 (`version=V311`, no properties) or 5."""
    flags = 0x02 if clean else 0
    payload = encode_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
        if password is not None:
            flags |= 0x40
            payload += encode_string(password)
    body = encode_string("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += encode_varint(len(properties)) + properties
    return packet(0x10, body + payload)


def subscribe_packet(mid: int, filters: Sequence[tuple[str, int]], version: int = V5) -> bytes:
    props = b"\x00" if version == V5 else b""
    return packet(0x82, struct.pack("!H", mid) + props + b"".join(encode_string(f) + bytes([q]) for f, q in filters))


def unsubscribe_packet(mid: int, filters: Sequence[str], version: int = V5) -> bytes:
    props = b"\x00" if version == V5 else b""
    return packet(0xA2, struct.pack("!H", mid) + props + b"".join(encode_string(f) for f in filters))


def publish_packet(
    topic: str, payload: bytes, mid: int, *, qos: int = 1, version: int = V311, properties: bytes = b""
) -> bytes:
    """PUBLISH, not retained; `mid` (1..65535) only at QoS 1 or 2; `properties` (MQTT 5 only) already
    encoded, e.g. `prop_u32(MESSAGE_EXPIRY, seconds)`."""
    props = encode_varint(len(properties)) + properties if version == V5 else b""
    body = encode_string(topic) + (struct.pack("!H", mid) if qos else b"") + props
    return packet(0x30 | qos << 1, body + payload)


def puback_packets(mids: Iterable[int]) -> bytes:
    """PUBACKs with reason 'success' left implicit (MQTT 5 §3.4.2.1, and 3.1.1's form): 4 bytes each."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)


# -- decoding -------------------------------------------------------------------------------------------
def decode_varint(data: bytes, i: int, end: int | None = None) -> tuple[int, int]:
    """(value, index after it), or (0, -1) when `data` (or `end`) stops first. Never reads at or past
    `end`. More than four bytes: `MalformedPacket`."""
    limit = len(data) if end is None else min(end, len(data))
    value, shift = 0, 0
    for j in range(i, min(i + 4, limit)):
        digit = data[j]
        value |= (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, j + 1
        shift += 7
    if limit - i >= 4:
        raise MalformedPacket("a variable byte integer longer than four bytes")
    return 0, -1


def frame(data: bytes, i: int, max_size: int) -> tuple[int, int]:
    """(start of the body, end of the packet) of the packet at `i`, or (-1, -1) while incomplete.

    A packet whose announced size exceeds `max_size` is refused as soon as its length is known, so a
    hostile length can never make us buffer without bound."""
    if i + 2 > len(data):
        return -1, -1
    length, j = decode_varint(data, i + 1)
    if j < 0:
        return -1, -1
    if j - i + length > max_size:
        raise MalformedPacket(f"a packet of {j - i + length} bytes, above the maximum of {max_size}")
    end = j + length
    return (j, end) if end <= len(data) else (-1, -1)


def parse_properties(data: bytes, i: int, end: int) -> tuple[dict[int, int | str | bytes], int]:
    """MQTT 5 properties at `i`, bounded by `end`: (values by identifier, index after them).
    User properties are skipped; a repeated or unknown identifier is malformed."""
    length, j = decode_varint(data, i, end)
    if j < 0 or j + length > end:
        raise MalformedPacket("properties run past their packet")
    stop, values = j + length, {}
    while j < stop:
        ident = data[j]
        j += 1
        value: int | str | bytes
        if ident in _BYTE:
            size = 1
        elif ident in _TWO:
            size = 2
        elif ident in _FOUR:
            size = 4
        elif ident in _VARINT:
            value, after = decode_varint(data, j, stop)
            if after < 0:
                raise MalformedPacket("a property runs past the properties")
            values[ident], j = value, after
            continue
        elif ident in _TEXT or ident in _BINARY or ident == USER_PROPERTY:
            j = _skip_or_take(data, j, stop, ident, values)
            continue
        else:
            raise MalformedPacket(f"unknown property 0x{ident:02x}")
        if j + size > stop:
            raise MalformedPacket("a property runs past the properties")
        if ident in values:
            raise MalformedPacket(f"property 0x{ident:02x} given twice")
        values[ident] = int.from_bytes(data[j : j + size], "big")
        j += size
    return values, stop


def _skip_or_take(data: bytes, j: int, stop: int, ident: int, values: dict[int, int | str | bytes]) -> int:
    pairs = 2 if ident == USER_PROPERTY else 1
    start = j
    for _ in range(pairs):
        if j + 2 > stop:
            raise MalformedPacket("a property runs past the properties")
        j += 2 + (data[j] << 8 | data[j + 1])
        if j > stop:
            raise MalformedPacket("a property runs past the properties")
    if ident != USER_PROPERTY:
        raw = data[start + 2 : j]
        try:
            values[ident] = raw.decode() if ident in _TEXT else raw
        except UnicodeDecodeError:
            raise MalformedPacket(f"property 0x{ident:02x} is not UTF-8") from None
    return j


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason: int
    properties: dict[int, int | str | bytes] = field(default_factory=dict)


def parse_connack(body: bytes, version: int = V5) -> Connack:
    if len(body) < 2 or body[0] & 0xFE:
        raise MalformedPacket("a CONNACK shorter than two bytes or with reserved flags set")
    props: dict[int, int | str | bytes] = {}
    if version == V5 and len(body) > 2:
        props, after = parse_properties(body, 2, len(body))
        if after != len(body):
            raise MalformedPacket("bytes after CONNACK's properties")
    return Connack(bool(body[0] & 1), body[1], props)


def parse_ack(body: bytes, version: int = V5) -> tuple[int, bytes]:
    """SUBACK or UNSUBACK: (packet id, one reason code per filter)."""
    if len(body) < 2:
        raise MalformedPacket("an acknowledgement without a packet id")
    start = 2
    if version == V5:
        _props, start = parse_properties(body, 2, len(body))
    return body[0] << 8 | body[1], body[start:]


def parse_inbound(
    data: bytes, topics: list[str], payloads: list[bytes], mids: list[int], controls: list[tuple[int, bytes]],
    *, max_messages: int, max_size: int, cache: dict[bytes, str], version: int = V5,
) -> int:  # fmt: skip
    """Parse the complete packets at the start of `data`; returns how many bytes were consumed.

    PUBLISH packets (QoS 0 or 1) go to the parallel lists (`mids` 0 for QoS 0), any other packet to
    `controls` as (first byte, body). Stops once `max_messages` messages are in. The hot path of the
    gateway: one- and two-byte lengths and empty properties are handled inline."""
    i, n = 0, len(data)
    while i + 2 <= n:
        first = data[i]
        digit = data[i + 1]
        if digit < 0x80:
            length, j = digit, i + 2
        elif i + 2 < n and data[i + 2] < 0x80:
            length, j = (digit & 0x7F) | data[i + 2] << 7, i + 3
        else:
            length, j = decode_varint(data, i + 1)
            if j < 0:
                break
        end = j + length
        if end - i > max_size:
            raise MalformedPacket(f"a packet of {end - i} bytes, above the maximum of {max_size}")
        if end > n:
            break  # incomplete
        if first >> 4 == PUBLISH:
            qos = first >> 1 & 3
            if qos > 1:
                raise MalformedPacket(f"PUBLISH at QoS {qos} (subscribed at QoS 1 at most)")
            k = j + 2
            if k > end:
                raise MalformedPacket("PUBLISH shorter than its topic length")
            k += data[j] << 8 | data[j + 1]
            if k == j + 2 or k + (2 if qos else 0) + (version == V5) > end:  # id and properties length
                raise MalformedPacket("PUBLISH topic empty or longer than its packet")
            raw_topic = data[j + 2 : k]
            topic = cache.get(raw_topic)
            if topic is None:
                topic = _topic(raw_topic, cache)
            if qos:
                mid = data[k] << 8 | data[k + 1]
                if not mid:
                    raise MalformedPacket("PUBLISH at QoS 1 with packet id 0")
                k += 2
            else:
                mid = 0
            if version == V5:
                if data[k] == 0:
                    k += 1
                else:
                    props, after = decode_varint(data, k, end)
                    if after < 0 or after + props > end:
                        raise MalformedPacket("PUBLISH properties longer than their packet")
                    k = after + props
            mids.append(mid)
            topics.append(topic)
            payloads.append(data[k:end])
        else:
            controls.append((first, data[j:end]))
        i = end
        if len(topics) >= max_messages:
            break
    return i


TOPIC_CACHE_MAX = 100_000  # topics repeat per device; decoded once each


def _topic(raw: bytes, cache: dict[bytes, str]) -> str:
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        raise MalformedPacket("a topic that is not UTF-8") from None
    if "\x00" in topic or "+" in topic or "#" in topic:
        raise MalformedPacket("a topic name with NUL or a wildcard")
    if len(cache) >= TOPIC_CACHE_MAX:
        cache.clear()
    cache[raw] = topic
    return topic


def count_pubacks(data: bytes) -> tuple[int, int]:
    """(PUBACKs at the start of `data`, bytes consumed); other packets are skipped whole."""
    count, i = 0, 0
    while True:
        j, end = frame(data, i, VARINT_MAX + 5)
        if j < 0:
            return count, i
        count += data[i] >> 4 == PUBACK
        i = end
