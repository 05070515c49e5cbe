"""JSON telemetry v1 (`fleet/{device_id}/telemetry`): one record, or a batch `{"v": 1, "records": [...]}`.

msgspec decodes straight into a typed Struct (about 1 µs for a record): unknown fields are skipped
for forward compatibility, a known field of the wrong type is refused by msgspec itself, and the
range rules that need a reason code of their own (out_of_range, not_finite, future_time, ...) are
checked here. One pass over the bytes decides single versus batch: a message with `records` is a
batch, anything else a single record.

A bad single record refuses the message (raise). In a batch, each bad record becomes a `Reject`
holding that record's own bytes and the good records are kept: a tracker that buffered 900 points
offline must not lose them to one bad sensor reading. An `id` that disagrees with the topic refuses
the whole batch, because it means the firmware is misconfigured or impersonating another device.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.decoders import checks
from gateway.decoders.jsonwire import decode_struct
from gateway.decoders.results import Decoded, Reject
from gateway.records import DecodeError, Source, Telemetry

VERSION = 1
MAX_RECORDS = 1000
MAX_FAULTS = 32
MAX_FAULT_LEN = 64


class Record(msgspec.Struct, frozen=True):
    """Wire form of one v1 record; field names are the protocol's, units are in the names."""

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


_message = msgspec.json.Decoder(Message)
_record = msgspec.json.Decoder(Record)


def decode_json(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    msg = decode_struct(_message, payload)
    if msg.records is None:
        return Decoded((to_telemetry(msg, device_id, now=now, tolerance_s=tolerance_s),))
    return _decode_batch(msg, msg.records, device_id, now=now, tolerance_s=tolerance_s)


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
    no_fix = rec.fix == 0
    # Positional, in the field order of gateway.records.Telemetry: keyword arguments cost twice as
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


_RANGES = (
    # field, low, high, high end open
    ("alt_m", -1000.0, 100_000.0, False),
    ("speed_kmh", 0.0, checks.MAX_SPEED_KMH, True),
    ("heading_deg", 0.0, 360.0, True),
    ("acc_m", 0.0, 1e7, False),
    ("sats", 0, 255, False),
    ("hdop", 0.0, 1000.0, False),
    ("battery_pct", 0.0, 100.0, False),
    ("odometer_m", 0.0, 1e10, False),
)


def _check_ranges(rec: Record) -> None:
    for name, low, high, high_open in _RANGES:
        value = getattr(rec, name)
        # fast path for the usual good value; NaN fails every comparison and takes the slow path
        if value is not None and not (low <= value < high if high_open else low <= value <= high):
            checks.in_range(name, value, low, high, high_open=high_open)
    if rec.fix is not None and rec.fix not in (0, 2, 3):
        raise DecodeError("out_of_range", f"fix={rec.fix}, expected 0, 2 or 3")
    if rec.faults is not None:
        if len(rec.faults) > MAX_FAULTS:
            raise DecodeError("out_of_range", f"{len(rec.faults)} fault codes, at most {MAX_FAULTS}")
        if any(not f or len(f) > MAX_FAULT_LEN for f in rec.faults):
            raise DecodeError("out_of_range", f"fault codes must be 1..{MAX_FAULT_LEN} characters")
