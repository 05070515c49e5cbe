"""Hostile input: whatever the bytes and the topic, only `DecodeError` may escape a decoder, and
whatever is accepted satisfies the shared invariants."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import reduce
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invariants import check_decoded

from gateway.decoders import REASONS, decode, decode_ack, decode_status, route
from kernel.records import DecodeError, RawMessage

NOW = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOPICS = st.one_of(
    st.sampled_from(
        [
            "fleet/bike-1/telemetry",
            "fleet/bike-1/nmea",
            "fleet/bike-1/status",
            "fleet/bike-1/cmd/ack",
            "fleet/bike-1/cmd",
            "owntracks/jane/pixel",
            "owntracks/jane/pixel/event",
        ]
    ),
    st.text(max_size=80),
    st.lists(st.text(max_size=12), max_size=5).map("/".join),
)


def _refusal(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Call a decoder; a `DecodeError` is a refusal (its reason), anything else propagates."""
    try:
        return fn(*args, **kwargs), None
    except DecodeError as exc:
        return None, exc.reason


def _decode_or_refuse(topic: str, payload: bytes) -> None:
    decoded, reason = _refusal(decode, RawMessage(topic, payload, NOW), now=NOW)
    if reason is None:
        check_decoded(decoded, NOW)
    else:
        assert reason in REASONS


@FUZZ
@given(topic=TOPICS, payload=st.binary(max_size=2048))
def test_random_bytes_on_any_topic(topic: str, payload: bytes) -> None:
    _decode_or_refuse(topic, payload)
    r = route(topic)
    assert r is None or r.kind in ("telemetry", "nmea", "status", "cmd_ack", "owntracks")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["v", "id", "ts", "lat", "lon", "alt_m", "speed_kmh", "heading_deg", "acc_m", "fix", "sats"]
FIELDS += ["hdop", "battery_pct", "odometer_m", "locked", "faults", "records", "_type", "tst", "batt"]
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.floats(min_value=-200, max_value=200),
    st.integers(min_value=946684800, max_value=1748779300),
    st.sampled_from([1, "bike-1", "location", "2025-06-01T11:00:00Z"]),
)
RECORDS = st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=10)


@FUZZ
@given(record=RECORDS, batch=st.lists(RECORDS, max_size=5), topic=TOPICS)
def test_structured_json_near_the_schema(record: dict[str, Any], batch: list[Any], topic: str) -> None:
    for payload in (record, {"v": 1, "records": batch}, {**record, "v": 1}):
        raw = json.dumps(payload).encode()
        for t in (topic, "fleet/bike-1/telemetry", "owntracks/bike-1/phone"):
            _decode_or_refuse(t, raw)


def _checksummed(body: str) -> str:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


SENTENCE_FIELDS = st.lists(
    st.one_of(
        st.text(alphabet="0123456789.-+NSEWAVDSnaif", max_size=12),
        st.sampled_from(["", "A", "V", "8", "0", "4807.038", "01131.000", "120000.00", "010625", "8960.0"]),
    ),
    max_size=16,
)


@FUZZ
@given(
    sentences=st.lists(
        st.tuples(
            st.sampled_from(["GP", "GN", "BD", "XX"]),
            st.sampled_from(["RMC", "GGA", "GLL", "VTG", "ZDA", "GSA", "GSV"]),
            SENTENCE_FIELDS,
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_nmea_with_valid_checksums_and_hostile_fields(sentences: list[tuple[str, str, list[str], bool]]) -> None:
    lines = []
    for talker, kind, fields, good_checksum in sentences:
        line = _checksummed(",".join([talker + kind, *fields]))
        lines.append(line if good_checksum else line[:-1] + "Z")
    _decode_or_refuse("fleet/bike-1/nmea", "\r\n".join(lines).encode())


@FUZZ
@given(payload=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_status_and_ack_raise_only_decode_error(payload: bytes) -> None:
    for fn in (decode_status, decode_ack):
        _, reason = _refusal(fn, payload)
        assert reason is None or reason in REASONS
