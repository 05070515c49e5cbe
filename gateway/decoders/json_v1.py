"""JSON telemetry v1 (`fleet/{device_id}/telemetry`): one record, or a batch `{"v": 1, "records": [...]}`.

msgspec decodes straight into a typed Struct: unknown fields are skipped for forward compatibility,
a known field of the wrong type is refused by msgspec itself. One pass over the bytes decides single
versus batch: a message with `records` is a batch, anything else a single record.

Two paths, one set of rules. The fast path decodes into `Checked`, whose field types carry the
range rules as msgspec constraints, so a good message (nearly every message) is checked in C and
only time, identity and position are looked at in Python. Any doubt on the fast path (a constraint
failed, a foreign id, a bad time) sends the message down the exact path, which decodes without
constraints and applies the same rules one by one to find the reason code each refused record gets
(out_of_range, not_finite, bad_string, future_time, ...). The constraints on `Checked` are built
from the table every format shares (`checks.BOUNDS`); the exact path reads its limits from `Checked`.
Nesting is bounded on the bytes before either path parses (`jsonwire.check_depth`).

A bad single record refuses the message (raise). In a batch, each bad record becomes a `Reject`
holding that record's own bytes and the good records are kept: a tracker that buffered 900 points
offline must not lose them to one bad sensor reading. An `id` that disagrees with the topic refuses
the whole batch, because it means the firmware is misconfigured or impersonating another device.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from gateway.decoders import checks
from gateway.decoders.jsonwire import MAX_DEPTH, check_depth, decode_struct
from gateway.decoders.results import Decoded
from kernel.records import DecodeError, Reject, Source, Telemetry

VERSION = 1
MAX_RECORDS = 1000
MAX_FAULTS = 32
MAX_FAULT_LEN = 64
Fix = Literal[0, 2, 3]  # none, 2D, 3D (as NMEA and gpsd)
FIXES = get_args(Fix)


class Record(msgspec.Struct, frozen=True):
    """Wire form of one v1 record as types only; field names are the protocol's, units in the names."""

    v: int | None = None
    id: str | None = None
    ts: str | float | None = None
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_kmh: float | None = None
    heading_deg: float | None = None
    acc_m: float | None = None
    fix: int | None = None
    sats: int | None = None
    hdop: float | None = None
    battery_pct: float | None = None
    odometer_m: float | None = None
    locked: bool | None = None
    faults: list[str] | None = None


class Message(Record, frozen=True):
    """A single record, or a batch envelope when `records` is present."""

    records: list[msgspec.Raw] | None = None


def _bounded(field: str, kind: type = float) -> object:
    """The msgspec type of a numeric field, constrained by the shared table (`checks.BOUNDS`)."""
    b = checks.BOUNDS[field]
    meta = Meta(ge=kind(b.low), lt=kind(b.high)) if b.high_open else Meta(ge=kind(b.low), le=kind(b.high))
    return Annotated[kind, meta]  # type: ignore[valid-type]


FaultCode = Annotated[str, Meta(min_length=1, max_length=MAX_FAULT_LEN)]
Altitude = _bounded("altitude_m")
Speed = _bounded("speed_kmh")
Heading = _bounded("heading_deg")
Accuracy = _bounded("accuracy_m")
Satellites = _bounded("satellites", int)
Hdop = _bounded("hdop")
Battery = _bounded("battery_pct")
Odometer = _bounded("odometer_m")


class Checked(msgspec.Struct, frozen=True):
    """`Record` with the v1 rules as constraints: the fast path's type. The limits come from
    `checks.BOUNDS`, shared with every format (units: degrees, metres, km/h, percent)."""

    v: Literal[1] | None = None
    id: str | None = None
    ts: str | float | None = None
    lat: Annotated[float, Meta(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, Meta(ge=-180.0, le=180.0)] | None = None
    alt_m: Altitude | None = None  # type: ignore[valid-type]
    speed_kmh: Speed | None = None  # type: ignore[valid-type]
    heading_deg: Heading | None = None  # type: ignore[valid-type]
    acc_m: Accuracy | None = None  # type: ignore[valid-type]
    fix: Fix | None = None
    sats: Satellites | None = None  # type: ignore[valid-type]
    hdop: Hdop | None = None  # type: ignore[valid-type]
    battery_pct: Battery | None = None  # type: ignore[valid-type]
    odometer_m: Odometer | None = None  # type: ignore[valid-type]
    locked: bool | None = None
    faults: Annotated[list[FaultCode], Meta(max_length=MAX_FAULTS)] | None = None


class CheckedMessage(Checked, frozen=True):
    records: Annotated[list[Checked], Meta(min_length=1, max_length=MAX_RECORDS)] | None = None


def _ranges() -> tuple[tuple[str, float, float, bool], ...]:
    """(field, low, high, high end open) for every numeric range on `Checked`, for the exact path."""
    out = []
    for field in msgspec.inspect.type_info(Checked).fields:  # type: ignore[union-attr]
        for t in getattr(field.type, "types", (field.type,)):
            numeric = isinstance(t, msgspec.inspect.FloatType | msgspec.inspect.IntType)
            if numeric and t.ge is not None and field.name not in _POSITION:
                high_open = t.lt is not None
                out.append((field.name, t.ge, t.lt if high_open else t.le, high_open))  # type: ignore[arg-type]
    return tuple(out)


_POSITION = frozenset({"lat", "lon"})  # checked by checks.position, which also knows (0, 0)
_RANGES = _ranges()

_message = msgspec.json.Decoder(Message)
_record = msgspec.json.Decoder(Record)
_checked = msgspec.json.Decoder(CheckedMessage)
_fromtimestamp = datetime.fromtimestamp
_fromisoformat = datetime.fromisoformat


def decode_json(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH:  # inlined: the common case costs no call
        check_depth(payload)  # before any parser recurses
    fast = _decode_fast(payload, device_id, _latest(now, tolerance_s))
    return fast if fast is not None else decode_json_exact(payload, device_id, now=now, tolerance_s=tolerance_s)


def decode_json_exact(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    """The rules one by one, for a message the fast path did not accept: the reason codes live here."""
    msg = decode_struct(_message, payload)
    if msg.records is None:
        return Decoded((to_telemetry(msg, device_id, now=now, tolerance_s=tolerance_s),))
    return _decode_batch(msg, msg.records, device_id, now=now, tolerance_s=tolerance_s)


_last_latest: list[tuple[datetime, float, datetime]] = [(checks.EARLIEST, 0.0, checks.EARLIEST)]


def _latest(now: datetime, tolerance_s: float) -> datetime:
    """The newest device time accepted. Every message of a gateway batch shares the same `now`
    object, so the last answer is kept and found by identity: hashing an aware datetime (as a
    `functools.lru_cache` would) costs about a microsecond."""
    last_now, last_tolerance, latest = _last_latest[0]  # one read: safe if threads share the decoder
    if last_now is not now or last_tolerance != tolerance_s:
        latest = now + timedelta(seconds=tolerance_s)
        _last_latest[0] = (now, tolerance_s, latest)
    return latest


def _decode_fast(payload: bytes, device_id: str, latest: datetime) -> Decoded | None:
    """Every record of a message that passes every v1 rule, or None if any rule might fail.

    Must accept exactly what the exact path accepts and build the same records; None only costs
    time (tests/unit/decoders/test_decode_json_paths.py holds the two paths to that)."""
    try:
        msg = _checked.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    if msg.v is None or (msg.id is not None and msg.id != device_id):
        return None
    records = (msg,) if msg.records is None else msg.records
    out = []
    maybe_control = None
    for rec in records:
        if rec.id is not None and rec.id != device_id:
            return None
        if rec.faults:
            if maybe_control is None:
                maybe_control = _maybe_control(payload)
            if maybe_control and any(checks.has_control(f) for f in rec.faults):
                return None
        ts = rec.ts
        try:
            if ts.__class__ is float:
                when = _fromtimestamp(ts, UTC)  # type: ignore[arg-type]
            elif ts is None:
                return None
            else:
                when = _fromisoformat(ts)  # type: ignore[arg-type]
                if when.tzinfo is None:
                    return None
            if not checks.EARLIEST <= when <= latest:
                return None
        except (ValueError, OverflowError, OSError):
            return None
        if when.tzinfo is not UTC:
            when = when.astimezone(UTC)
        lat, lon = rec.lat, rec.lon
        if (lat is None) is not (lon is None) or (lat == 0.0 and lon == 0.0):
            return None
        out.append(_telemetry(rec, device_id, when))
    return Decoded(tuple(out))


def _maybe_control(payload: bytes) -> bool:
    """Whether any string of the message could hold a control character. msgspec refuses raw ones
    below 0x20 inside strings, so only an escape (`\\n`, `\\u0000`, ...), a raw DEL or non-ASCII
    bytes (C1 controls) can bring one: three scans in C, instead of a regex per fault code."""
    return b"\\" in payload or b"\x7f" in payload or not payload.isascii()


def _decode_batch(
    envelope: Message, raws: list[msgspec.Raw], device_id: str, *, now: datetime, tolerance_s: float
) -> Decoded:
    if envelope.v != VERSION:
        raise DecodeError("bad_version", f"batch v={envelope.v!r}, expected {VERSION}")
    _check_id(envelope.id, device_id)
    if not raws:
        raise DecodeError("empty", "batch has no records")
    if len(raws) > MAX_RECORDS:
        raise DecodeError("too_many_records", f"{len(raws)} records, at most {MAX_RECORDS}")
    records: list[Telemetry] = []
    rejects: list[Reject] = []
    for raw in raws:
        raw_bytes = bytes(raw)
        try:
            rec = decode_struct(_record, raw_bytes)
        except DecodeError as exc:
            rejects.append(Reject.of(exc, raw_bytes))
            continue
        _check_id(rec.id, device_id)  # raises out of the loop: a foreign id refuses the whole batch
        try:
            records.append(to_telemetry(rec, device_id, now=now, tolerance_s=tolerance_s, in_batch=True))
        except DecodeError as exc:
            rejects.append(Reject.of(exc, raw_bytes))
    return Decoded(tuple(records), tuple(rejects))


def _check_id(claimed: str | None, device_id: str) -> None:
    if claimed is not None and claimed != device_id:
        raise DecodeError("id_mismatch", f"payload id {claimed[:70]!r} but topic says {device_id!r}")


def to_telemetry(
    rec: Record, device_id: str, *, now: datetime, tolerance_s: float, in_batch: bool = False
) -> Telemetry:
    """Apply the v1 rules to one decoded record. Order matters only for which reason is reported
    when several apply: version and identity first, since they say the rest cannot be trusted."""
    if rec.v is None and not in_batch:
        raise DecodeError("bad_version", "single record without v")
    if rec.v is not None and rec.v != VERSION:
        raise DecodeError("bad_version", f"v={rec.v}, expected {VERSION}")
    _check_id(rec.id, device_id)
    if rec.ts is None:
        raise DecodeError("bad_schema", "ts is required")
    when = checks.from_iso(rec.ts) if isinstance(rec.ts, str) else checks.from_epoch(rec.ts)
    when = checks.device_time(when, now, tolerance_s)
    checks.position(rec.lat, rec.lon)
    _check_ranges(rec)
    return _telemetry(rec, device_id, when)


def _telemetry(rec: Record | Checked, device_id: str, when: datetime) -> Telemetry:
    """The v1 → `Telemetry` mapping, for a record that passed every rule (either path). A record
    without a fix keeps its state fields but has no position, whatever its lat/lon say."""
    no_fix = rec.fix == 0
    # Positional, in the field order of kernel.records.Telemetry: keyword arguments cost twice as
    # much on this hot path (2.6 vs 5.2 µs). test_full_single_record_maps_every_field guards the order.
    return Telemetry(
        device_id,
        when,
        Source.JSON,
        None if no_fix else rec.lat,
        None if no_fix else rec.lon,
        rec.alt_m,
        rec.speed_kmh,
        rec.heading_deg,
        rec.acc_m,
        rec.fix,
        rec.sats,
        rec.hdop,
        rec.battery_pct,
        rec.odometer_m,
        rec.locked,
        tuple(rec.faults) if rec.faults else (),
    )


def _check_ranges(rec: Record) -> None:
    for name, low, high, high_open in _RANGES:
        value = getattr(rec, name)
        # fast path for the usual good value; NaN fails every comparison and takes the slow path
        if value is not None and not (low <= value < high if high_open else low <= value <= high):
            checks.in_range(name, value, low, high, high_open=high_open)
    if rec.fix is not None and rec.fix not in FIXES:
        raise DecodeError("out_of_range", f"fix={rec.fix}, expected 0, 2 or 3")
    if rec.faults is not None:
        if len(rec.faults) > MAX_FAULTS:
            raise DecodeError("out_of_range", f"{len(rec.faults)} fault codes, at most {MAX_FAULTS}")
        if any(not f or len(f) > MAX_FAULT_LEN for f in rec.faults):
            raise DecodeError("out_of_range", f"fault codes must be 1..{MAX_FAULT_LEN} characters")
        for i, code in enumerate(rec.faults):
            checks.text(f"faults[{i}]", code)
