"""What every decoded record must satisfy, whatever the format; applied to every record in every
decoder test (as Traccar's ProtocolTest.verifyPosition does), so a rule broken by one decoder is
caught by all of its tests, not only the one written for it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from gateway.decoders import REASONS, Decoded, is_device_id
from kernel.records import Source, Telemetry

FUTURE_LIMIT = timedelta(hours=25)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def _finite_or_none(record: Telemetry, name: str) -> None:
    value = getattr(record, name)
    assert value is None or (isinstance(value, float | int) and math.isfinite(value)), (name, value)


def check_record(record: Telemetry, now: datetime) -> Telemetry:
    assert is_device_id(record.device_id), record.device_id
    assert isinstance(record.source, Source)
    assert record.time.tzinfo is not None and record.time.utcoffset() == timedelta(0), record.time
    assert EARLIEST <= record.time <= now + FUTURE_LIMIT, record.time
    for name in ("lat", "lon", "altitude_m", "speed_kmh", "heading_deg", "accuracy_m", "hdop"):
        _finite_or_none(record, name)
    for name in ("battery_pct", "odometer_m"):
        _finite_or_none(record, name)
    assert (record.lat is None) == (record.lon is None), "lat and lon come together"
    if record.has_position:
        assert record.lat is not None and record.lon is not None
        assert -90.0 < record.lat < 90.0, record.lat  # the poles are power-up placeholders
        assert -180.0 <= record.lon <= 180.0, record.lon
        assert (record.lat, record.lon) != (0.0, 0.0), "(0, 0) is never a position"
        assert record.fix != 0, "a no-fix record carries no position"
    assert record.speed_kmh is None or 0.0 <= record.speed_kmh < 400.0, record.speed_kmh
    assert record.heading_deg is None or 0.0 <= record.heading_deg < 360.0, record.heading_deg
    assert record.accuracy_m is None or record.accuracy_m >= 0.0
    assert record.hdop is None or record.hdop >= 0.0
    assert record.satellites is None or 0 <= record.satellites <= 255
    assert record.fix in (None, 0, 2, 3), record.fix
    assert record.battery_pct is None or 0.0 <= record.battery_pct <= 100.0
    assert record.odometer_m is None or record.odometer_m >= 0.0
    assert record.locked in (None, True, False)
    assert isinstance(record.faults, tuple) and all(isinstance(f, str) and f for f in record.faults)
    return record


def check_decoded(decoded: Decoded, now: datetime) -> Decoded:
    assert isinstance(decoded.records, tuple) and isinstance(decoded.rejects, tuple)
    for record in decoded.records:
        check_record(record, now)
    for reject in decoded.rejects:
        assert isinstance(reject.raw, bytes) and reject.raw, reject
        assert reject.reason in REASONS and isinstance(reject.detail, str), reject
    return decoded
