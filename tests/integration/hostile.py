"""Hostile device input for the whole pipeline: generated payloads and the oracle that says what each
must become. Used by the suite's short run (test_hostile_pipeline.py) and by `fleet bench hostile`.

The oracle is the gateway's own pure intake, applied to one message at a time: the pipeline must do
on the real servers exactly what the pure core decides (records stored once, one dead letter per
reason), and the core must account for every message (records, a dead letter, or an explicit
"ignored"). What the database would refuse must never get past the decoders: a `db_refused` dead
letter means a decoder let something through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import strategies as st

from gateway import decoders
from gateway.intake import Intake, classify
from kernel.records import RawMessage

MAX_PAYLOAD = 16384
KINDS = ("telemetry", "nmea", "owntracks", "status", "cmd/ack")

_ODD_CHARS = st.characters(codec="utf-8") | st.sampled_from(["\x00", "\x1f", "\x7f", "\x85", "\u2028", "\ufeff"])
_ODD_TEXT = st.text(_ODD_CHARS, max_size=12) | st.just("\ud800")  # a lone surrogate, escaped by json.dumps
_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**31, 2**63, 65536, 256, -1, 360, 90.0000001, 180.5]),
)
_LEAF = st.one_of(st.none(), st.booleans(), _NUMBERS, _ODD_TEXT)
_VALUE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ODD_TEXT, inner, max_size=3),
                      max_leaves=8)  # fmt: skip
_FIELDS = (
    "v",
    "ts",
    "lat",
    "lon",
    "fix",
    "faults",
    "speed_kmh",
    "heading_deg",
    "altitude_m",
    "battery_pct",
    "sats",
    "hdop",
    "locked",
    "id",
    "records",
    "_type",
    "tst",
    "batt",
    "acc",
    "vel",
    "cog",
    "result",
)


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # keeps lone surrogates as \ud800 escapes


@st.composite
def _record(draw: st.DrawFn, now: datetime) -> dict[str, object]:
    """A JSON v1 or OwnTracks-like object: plausible fields, some of them given odd values."""
    offset = draw(st.integers(-86_400 * 400, 900))
    body: dict[str, object] = {"v": 1, "ts": (now + timedelta(seconds=offset)).isoformat(),
                               "lat": draw(st.floats(-90, 90)), "lon": draw(st.floats(-180, 180))}  # fmt: skip
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=4, unique=True)):
        body[name] = draw(_VALUE)
    return body


_LEGAL_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=12)


@st.composite
def _legal(draw: st.DrawFn, now: datetime) -> dict[str, object]:
    """A record the gateway must store, with values at the edges of what is allowed."""
    body: dict[str, object] = {
        "v": 1, "ts": (now - timedelta(seconds=draw(st.integers(0, 86_400 * 30)), microseconds=draw(
            st.integers(0, 999_999)))).isoformat(),
        "lat": draw(st.sampled_from([-90.0, 90.0, 0.0]) | st.floats(-90, 90)),
        "lon": draw(st.sampled_from([-180.0, 179.9999999, 0.0]) | st.floats(-180, 180)),
    }  # fmt: skip
    if draw(st.booleans()):
        body["faults"] = draw(st.lists(_LEGAL_TEXT, max_size=3))
    return body


# shape → the topic it is usually sent on (sometimes another, at random)
SHAPES = {"binary": "telemetry", "record": "telemetry", "batch": "telemetry", "deep": "telemetry",
          "duplicate_keys": "telemetry", "nmea": "nmea", "owntracks": "owntracks", "oversize": "telemetry",
          "ack": "cmd/ack", "legal": "telemetry", "legal_batch": "telemetry"}  # fmt: skip


@st.composite
def payload(draw: st.DrawFn, now: datetime, shape: str) -> bytes:
    if shape == "legal":
        return _json(draw(_legal(now)))
    if shape == "legal_batch":
        return _json({"v": 1, "records": draw(st.lists(_legal(now), min_size=1, max_size=200))})
    if shape == "binary":
        return draw(st.binary(max_size=300))
    if shape == "record":
        return _json(draw(_record(now)))
    if shape == "batch":
        return _json({"v": 1, "records": draw(st.lists(_record(now), min_size=1, max_size=30))})
    if shape == "deep":
        depth = draw(st.integers(10, 4000))
        return b'{"v":1,"x":' + b"[" * depth + b"]" * draw(st.sampled_from([depth, 0])) + b"}"
    if shape == "duplicate_keys":
        ts = (now - timedelta(seconds=draw(st.integers(1, 3600)))).isoformat()
        return f'{{"v":1,"ts":"{ts}","lat":10,"lon":20,"lat":{draw(_NUMBERS)!r},"v":2}}'.encode()
    if shape == "nmea":
        junk = st.sampled_from([b"$", b"$$", b"\x00\xff", b"$GPRMC,", b"*7F", b",,,,", b"\r\n", b"$GPGGA,1"])
        line = st.lists(junk | st.binary(max_size=20), max_size=6).map(b"".join)
        return b"\r\n".join(draw(st.lists(line, max_size=draw(st.sampled_from([5, 3000])))))
    if shape == "owntracks":
        body = draw(_record(now))
        body["_type"] = draw(st.sampled_from(["location", "transition", "lwt", "waypoint", "card", "cmd"]))
        body["tst"] = draw(st.integers(0, 2**40) | _ODD_TEXT)
        return _json(body)
    if shape == "oversize":
        return b'{"v":1,"pad":"' + b"x" * draw(st.integers(MAX_PAYLOAD, 4 * MAX_PAYLOAD)) + b'"}'
    return _json({"id": draw(_ODD_TEXT), "result": draw(_LEAF), "detail": draw(_VALUE)})


def topic(kind: str, device_id: str) -> str:
    return f"owntracks/{device_id}/phone" if kind == "owntracks" else f"fleet/{device_id}/{kind}"


@st.composite
def message(draw: st.DrawFn, device_id: str, now: datetime) -> tuple[str, bytes]:
    shape = draw(st.sampled_from(sorted(SHAPES)))
    kind = SHAPES[shape] if draw(st.integers(0, 4)) else draw(st.sampled_from(KINDS))
    return topic(kind, device_id), draw(payload(now, shape))


def messages(device_id: str, now: datetime, max_size: int = 40) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    return st.lists(message(device_id, now), min_size=1, max_size=max_size)


@dataclass
class Expected:
    """What the pure core makes of the hostile messages: the record times it stores (a device's
    record is keyed by its time, so repeats fold), the dead letters it writes, and the messages it
    accounts for in no other way (status updates, acks, ignored)."""

    times: set[datetime] = field(default_factory=set)
    records: int = 0
    letters: int = 0
    other: int = 0
    unaccounted: list[bytes] = field(default_factory=list)


def expect(device_id: str, sent: Sequence[tuple[str, bytes]], now: datetime) -> Expected:
    """The oracle: the gateway's intake on each message alone, with a fresh dead-letter budget."""
    intake = Intake(decode=decoders.decode, max_payload=MAX_PAYLOAD, future_tolerance_s=300.0,
                    known=frozenset({device_id}))  # fmt: skip
    out = Expected()
    for t, p in sent:
        outcome = classify([RawMessage(t, p, now)], intake, now=now)
        records, dead = outcome.entry.records, outcome.entry.dead
        out.records += len(records)
        out.times.update(r.time for r in records)
        out.letters += len(dead)
        handled = len(outcome.status) + len(outcome.acks) + len(outcome.ignored)
        out.other += handled
        if not records and not dead and not handled:
            out.unaccounted.append(p[:200])
    return out


def finite_or_none(value: float | None) -> bool:
    return value is None or math.isfinite(value)
