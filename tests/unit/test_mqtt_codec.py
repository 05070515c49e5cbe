"""The one MQTT codec: encodings checked against the specification's examples, and its parsers fuzzed:
arbitrary bytes and mutated valid packets raise nothing but `MalformedPacket`, and no field of a
packet is ever read from the packet after it."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import mqtt_codec as codec
from kernel.mqtt_codec import MalformedPacket
from kernel.mqtt_session import MqttSession, SessionError

MAX = 1 << 20


def publish(topic: bytes, payload: bytes, mid: int = 0, props: bytes = b"", first: int | None = None) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if mid else b"")
    body += codec.encode_varint(len(props)) + props + payload
    return bytes([first if first is not None else 0x32 if mid else 0x30]) + codec.encode_varint(len(body)) + body


def parse(data: bytes, max_messages: int = 10_000) -> tuple[int, list[str], list[bytes], list[int], list]:
    topics: list[str] = []
    payloads: list[bytes] = []
    mids: list[int] = []
    controls: list[tuple[int, bytes]] = []
    used = codec.parse_inbound(data, topics, payloads, mids, controls, max_messages=max_messages, max_size=MAX,
                               cache={})  # fmt: skip
    return used, topics, payloads, mids, controls


topics_st = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="+#"), min_size=1, max_size=40
)
messages_st = st.lists(
    st.tuples(topics_st, st.binary(max_size=300), st.integers(0, 65535), st.sampled_from([b"", b"\x01\x01"])),
    min_size=1,
    max_size=8,
)


def encode_all(messages: list[tuple[str, bytes, int, bytes]]) -> bytes:
    return b"".join(publish(t.encode(), p, m, props) for t, p, m, props in messages)


# -- encodings --------------------------------------------------------------------------------------------
@given(st.integers(0, codec.VARINT_MAX))
def test_varint_round_trips(n: int) -> None:
    encoded = codec.encode_varint(n)
    assert len(encoded) <= 4
    assert codec.decode_varint(encoded + b"\xff", 0) == (n, len(encoded))
    assert codec.decode_varint(encoded[:-1], 0) == (0, -1)  # incomplete, not wrong


def test_varint_of_five_bytes_and_out_of_range_values_are_refused() -> None:
    with pytest.raises(MalformedPacket):
        codec.decode_varint(b"\x80\x80\x80\x80\x01", 0)
    with pytest.raises(ValueError):
        codec.encode_varint(codec.VARINT_MAX + 1)
    assert codec.decode_varint(b"\x80\x80\x01", 0, end=2) == (0, -1)  # never reads at or past `end`


def test_connect_encodings_for_both_versions() -> None:
    v311 = codec.connect_packet("c1", "user", "pw", keepalive=60, clean=True, version=codec.V311)
    assert v311[0] == 0x10 and v311[2:12] == b"\x00\x04MQTT\x04\xc2\x00\x3c"
    v5 = codec.connect_packet("c1", None, None, keepalive=30, clean=False, properties=b"\x21\x00\x0a")
    assert v5[2:16] == b"\x00\x04MQTT\x05\x00\x00\x1e\x03\x21\x00\x0a"
    assert codec.publish_packet("a/b", b"xyz", 10) == b"\x32\x0a\x00\x03a/b\x00\x0axyz"


@given(messages_st)
def test_valid_publishes_parse_back(messages: list[tuple[str, bytes, int, bytes]]) -> None:
    data = encode_all(messages)
    used, topics, payloads, mids, controls = parse(data)
    assert used == len(data) and not controls
    assert topics == [t for t, *_ in messages] and payloads == [p for _, p, *_ in messages]
    assert mids == [m for _, _, m, _ in messages]


# -- hostile input -----------------------------------------------------------------------------------------
@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_malformed_and_results_depend_only_on_consumed_bytes(data: bytes) -> None:
    try:
        used, *result = parse(data)
    except MalformedPacket:
        return
    assert 0 <= used <= len(data)
    assert parse(data[:used]) == (used, *result)  # nothing read beyond what was consumed


@settings(max_examples=400)
@given(messages_st, st.data())
def test_mutated_packets_never_read_into_the_next_packet(messages: list, data: st.DataObject) -> None:
    """Corrupt one byte of a valid stream, then append a sentinel: either the parser refuses the stream,
    or it reads each packet from that packet's bytes alone (parsing the packets one by one gives the
    same messages) and, when the framing still ends where the sentinel starts, the sentinel comes back whole."""
    stream = bytearray(encode_all(messages))
    where = data.draw(st.integers(0, len(stream) - 1))
    stream[where] = data.draw(st.integers(0, 255))
    sentinel = publish(b"fleet/sentinel/telemetry", b"SENTINEL", 9)
    whole = bytes(stream) + sentinel
    try:
        used, topics, payloads, mids, controls = parse(whole)
    except MalformedPacket:
        return
    boundaries, i = [0], 0
    while i < used:
        _j, i = codec.frame(whole, i, MAX)
        boundaries.append(i)
    alone: list[list] = [[], [], [], []]
    for start, end in itertools.pairwise(boundaries):
        n, *parts = parse(whole[start:end])
        assert n == end - start
        for into, part in zip(alone, parts, strict=True):
            into.extend(part)
    assert alone == [topics, payloads, mids, controls]
    if len(stream) in boundaries and used == len(whole):
        assert (topics[-1], payloads[-1], mids[-1]) == ("fleet/sentinel/telemetry", b"SENTINEL", 9)


def test_a_topic_length_past_its_packet_is_refused_not_read_from_the_next() -> None:
    # the topic length reaches 2 bytes into the next packet, whose header bytes ("0A") would make a
    # plausible topic: only the bounds check can tell
    bad = bytearray(publish(b"fleet/a", b"", props=b"\x02\x01\x01"))
    bad[2:4] = struct.pack("!H", 7 + 4 + 2)
    following = publish(b"fleet/b/telemetry", b"y" * 45)
    assert following[:2] == b"0A"
    with pytest.raises(MalformedPacket, match="longer than its packet"):
        parse(bytes(bad) + following)
    with pytest.raises(MalformedPacket, match="properties"):
        parse(publish(b"fleet/a/telemetry", b"", 1, props=b"")[:-1] + b"\x05" + publish(b"t/x", b"z", 3))


def test_qos_3_qos_2_and_oversize_packets_are_refused() -> None:
    with pytest.raises(MalformedPacket, match="QoS 3"):
        parse(publish(b"fleet/a/telemetry", b"x", 1, first=0x36))
    with pytest.raises(MalformedPacket, match="QoS 2"):
        parse(publish(b"fleet/a/telemetry", b"x", 1, first=0x34))
    with pytest.raises(MalformedPacket, match="maximum"):  # known from the header alone: no buffering
        codec.parse_inbound(b"\x30\xff\xff\x7f", [], [], [], [], max_messages=10, max_size=MAX, cache={})
    with pytest.raises(MalformedPacket, match="packet id 0"):
        parse(publish(b"fleet/a/telemetry", b"\x00\x00\x00x", first=0x32))  # mid 0, then properties 0


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_property_and_ack_parsers_raise_only_malformed(data: bytes) -> None:
    for call in (
        lambda: codec.parse_properties(data, 0, len(data)),
        lambda: codec.parse_connack(data),
        lambda: codec.parse_ack(data),
    ):
        with contextlib.suppress(MalformedPacket):
            call()


def test_connack_properties_are_read() -> None:
    props = b"\x13\x00\x05" + b"\x27\x00\x00\x10\x00" + b"\x22\x00\x00" + b"\x1f\x00\x02hi" + b"\x26\x00\x01k\x00\x01v"
    connack = codec.parse_connack(b"\x01\x00" + codec.encode_varint(len(props)) + props)
    assert connack.session_present and connack.reason == 0
    p = connack.properties
    assert (p[codec.SERVER_KEEP_ALIVE], p[codec.MAXIMUM_PACKET_SIZE], p[codec.REASON_STRING]) == (5, 4096, "hi")
    with pytest.raises(MalformedPacket, match="twice"):
        codec.parse_connack(b"\x00\x00\x06\x13\x00\x05\x13\x00\x05")


# -- the session on top of the parser ----------------------------------------------------------------------
def receive_until_broken(session: MqttSession) -> None:
    for _ in range(50):  # a closed stream ends it long before
        session.receive(0.5, 1000)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), messages_st.map(encode_all)), st.data())
def test_the_session_raises_only_session_error_on_any_stream(stream: bytes, data: st.DataObject) -> None:
    if stream and data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(stream) - 1))
        stream = stream[:cut] + bytes([data.draw(st.integers(0, 255))]) + stream[cut + 1 :]
    ours, broker = socket.socketpair()
    session = MqttSession("127.0.0.1", 0, "gw", None, None, keepalive=0)
    session._sock = ours  # an established connection, as connect() leaves it
    ours.setblocking(False)
    try:
        broker.sendall(stream)
        broker.close()
        with pytest.raises(SessionError):
            receive_until_broken(session)
    finally:
        ours.close()


def test_the_codec_is_pure() -> None:
    code = (
        "import sys, kernel.mqtt_codec; "
        "print(','.join(m for m in ('socket', 'ssl', 'asyncio', 'paho', 'select') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"kernel.mqtt_codec imports {out}"
