"""Poison pills: what the database cannot hold and what a parser cannot read safely is refused with a
reason before a record exists, in every format, and what real devices send is still accepted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decoders import Decoded, decode, decode_ack
from gateway.decoders.checks import BOUNDS
from gateway.decoders.jsonwire import MAX_DEPTH, check_depth
from kernel.records import DecodeError, RawMessage

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TS = (NOW - timedelta(seconds=5)).isoformat()
TST = int(NOW.timestamp()) - 5
T, N, OT = "fleet/bike-1/telemetry", "fleet/bike-1/nmea", "owntracks/bike-1/phone"
ACK_ID = "5f0c1a2e-8d7b-4c1e-9a3f-2b6d8e9f0a1b"

CONTROL = st.one_of(st.integers(0, 0x1F), st.integers(0x7F, 0x9F)).map(chr)
SAFE_TEXT = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=20)


def run(topic: str, payload: bytes) -> Decoded:
    return decode(RawMessage(topic, payload, NOW), now=NOW)


def reason(topic: str, payload: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        run(topic, payload)
    return info.value.reason


# -- control characters ---------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(before=SAFE_TEXT, bad=CONTROL, after=st.text(max_size=5))
def test_a_control_character_in_a_fault_code_is_refused_not_stored(before: str, bad: str, after: str) -> None:
    code = (before + bad + after)[:64]
    payload = orjson.dumps({"v": 1, "ts": TS, "lat": 52.5, "lon": 13.4, "faults": [code]})
    assert reason(T, payload) == "bad_string"


@pytest.mark.parametrize("bad", [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))])
def test_every_control_character_is_refused_whether_escaped_or_raw(bad: str) -> None:
    escaped = orjson.dumps({"v": 1, "ts": TS, "faults": ["E" + bad]})  # \n, \t, \u0000, raw DEL and C1
    assert reason(T, escaped) == "bad_string"
    batch = orjson.dumps({"v": 1, "records": [{"ts": TS, "faults": ["E" + bad]}, {"ts": TS, "faults": ["E"]}]})
    assert [r.reason for r in run(T, batch).rejects] == ["bad_string"]


@settings(max_examples=100, deadline=None)
@given(code=SAFE_TEXT)
def test_printable_fault_codes_are_kept_exactly(code: str) -> None:
    payload = orjson.dumps({"v": 1, "ts": TS, "lat": 52.5, "lon": 13.4, "faults": [code]})
    assert run(T, payload).records[0].faults == (code,)


def test_in_a_batch_only_the_record_with_the_control_character_is_refused() -> None:
    good = [{"ts": (NOW - timedelta(seconds=i)).isoformat(), "lat": 52.5, "lon": 13.4} for i in (3, 1)]
    bad = {"ts": (NOW - timedelta(seconds=2)).isoformat(), "lat": 52.5, "lon": 13.4, "faults": ["E\x00"]}
    out = run(T, orjson.dumps({"v": 1, "records": [good[0], bad, good[1]]}))
    assert len(out.records) == 2
    assert [r.reason for r in out.rejects] == ["bad_string"]


@pytest.mark.parametrize("detail", ["bad\x00", "\x1b[31mred", "x\x85"])
def test_an_ack_detail_with_a_control_character_is_refused(detail: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ack(orjson.dumps({"id": ACK_ID, "status": "error", "detail": detail}))
    assert info.value.reason == "bad_string"


def test_an_ack_detail_may_span_lines() -> None:
    assert decode_ack(orjson.dumps({"id": ACK_ID, "status": "error", "detail": "a\n\tb"})).detail == "a\n\tb"


# -- nesting ----------------------------------------------------------------------------------------
def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=3),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, wrap=st.integers(0, 24))
def test_depth_check_agrees_with_the_real_depth(value: object, wrap: int) -> None:
    """Brackets, quotes and backslashes inside strings never fool it."""
    for _ in range(wrap):
        value = [value]
    payload = json.dumps(value).encode()
    if _depth(value) > MAX_DEPTH:
        with pytest.raises(DecodeError, match="too_deep"):
            check_depth(payload)
    else:
        check_depth(payload)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(MAX_DEPTH - 3, 2500), opener=st.sampled_from([b"[", b'{"a":']))
def test_deep_nesting_is_refused_on_every_json_topic_and_never_raises_recursion(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    nest = opener * depth + b"1" + closer * depth
    telemetry = b'{"v":1,"ts":"' + TS.encode() + b'","lat":52.5,"lon":13.4,"x":' + nest + b"}"
    owntracks = b'{"_type":"location","lat":52.5,"lon":13.4,"tst":' + str(TST).encode() + b',"x":' + nest + b"}"
    ack = b'{"id":"' + ACK_ID.encode() + b'","status":"ok","x":' + nest + b"}"
    too_deep = depth + 1 > MAX_DEPTH  # the outer object is one more level
    for topic, payload in ((T, telemetry), (OT, owntracks)):
        if too_deep:
            assert reason(topic, payload) == "too_deep"
        else:
            assert len(run(topic, payload).records) == 1
    if too_deep:
        with pytest.raises(DecodeError, match="too_deep"):
            decode_ack(ack)
    else:
        assert decode_ack(ack).status == "ok"


# -- one table of bounds, every format ------------------------------------------------------------
REAL_MAX = 3.4028234663852886e38
SMALLINT_MAX = 32767


def test_every_bound_fits_its_column() -> None:
    for name, b in BOUNDS.items():
        limit = {"real": REAL_MAX, "smallint": SMALLINT_MAX, "double precision": 1.7e308}[b.column]
        assert -limit <= b.low < b.high <= limit, name


JSON_NAMES = {"altitude_m": "alt_m", "accuracy_m": "acc_m", "satellites": "sats"}
OWNTRACKS_NAMES = {"altitude_m": "alt", "speed_kmh": "vel", "heading_deg": "cog", "accuracy_m": "acc",
                   "battery_pct": "batt"}  # fmt: skip


def _outside(field: str) -> st.SearchStrategy[float]:
    b = BOUNDS[field]
    high = st.floats(b.high, 1e300) if b.high_open else st.floats(b.high, 1e300, exclude_min=True)
    low = st.floats(-1e300, b.low, exclude_max=True)
    if field in ("satellites",):
        return st.integers(int(b.high) + 1, 10**6) | st.integers(-(10**6), int(b.low) - 1)
    if field in OWNTRACKS_NAMES and b.low == 0:
        return high  # a negative OwnTracks value means "unknown"
    return high | low


@settings(max_examples=300, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(BOUNDS)))
def test_json_refuses_every_value_outside_the_shared_bounds(data: st.DataObject, field: str) -> None:
    value = data.draw(_outside(field))
    payload = orjson.dumps({"v": 1, "ts": TS, "lat": 52.5, "lon": 13.4, JSON_NAMES.get(field, field): value})
    assert reason(T, payload) == "out_of_range"


@settings(max_examples=200, deadline=None)
@given(data=st.data(), field=st.sampled_from(sorted(OWNTRACKS_NAMES)))
def test_owntracks_refuses_every_value_outside_the_shared_bounds(data: st.DataObject, field: str) -> None:
    value = data.draw(_outside(field))
    if field == "heading_deg" and value == 360.0:
        return  # OwnTracks' north
    payload = orjson.dumps({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": TST, OWNTRACKS_NAMES[field]: value})
    assert reason(OT, payload) == "out_of_range"


# -- real devices ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["batt", "acc", "vel", "cog"])
def test_owntracks_minus_one_means_unknown(field: str) -> None:
    payload = orjson.dumps({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": TST, field: -1})
    rec = run(OT, payload).records[0]
    assert (rec.battery_pct, rec.accuracy_m, rec.speed_kmh, rec.heading_deg) == (None, None, None, None)


@pytest.mark.parametrize("kind", ["transition", "lwt", "waypoint", "waypoints", "card", "cmd", "status", "steps"])
def test_owntracks_non_location_with_odd_field_types_is_ignored(kind: str) -> None:
    payload = orjson.dumps({"_type": kind, "tst": "1700000000", "lat": "x", "acc": [1], "batt": {"a": 1}})
    assert reason(OT, payload) == "not_a_location"


def _nmea(body: str) -> bytes:
    checksum = 0
    for ch in body.encode():
        checksum ^= ch
    return f"${body}*{checksum:02X}".encode()


GGA = "GPGGA,115955.00,5230.0000,N,01324.0000,E,1,{sats},{hdop},40.0,M,46.9,M,,"
RMC = _nmea("GNRMC,115955.00,A,5230.0000,N,01324.0000,E,5.0,90.0,231126,,,A")


@pytest.mark.parametrize("junk", [b"$", b"\x00\xff", b"$$$", b"garbage", b"\r\x00$GP"])
def test_nmea_bytes_before_the_sentence_are_dropped(junk: bytes) -> None:
    out = run(N, junk + RMC + b"\n" + junk + _nmea(GGA.format(sats="08", hdop="0.9")))
    assert len(out.records) == 1 and not out.rejects
    assert out.records[0].satellites == 8


def test_nmea_encapsulated_sentences_are_skipped() -> None:
    out = run(N, b"!AIVDM,1,1,,A,13u?etPv2;0n:dDPwUM1U1Cb069D,0*24\n" + RMC)
    assert len(out.records) == 1 and not out.rejects


@pytest.mark.parametrize(("sats", "hdop"), [("256", "0.9"), ("9999", "0.9"), ("08", "-0.5"), ("08", "1" + "0" * 60)])
def test_nmea_impossible_satellites_or_hdop_refuse_the_epoch(sats: str, hdop: str) -> None:
    out = run(N, RMC + b"\n" + _nmea(GGA.format(sats=sats, hdop=hdop)))
    assert not out.records
    assert [r.reason for r in out.rejects] == ["out_of_range"]
