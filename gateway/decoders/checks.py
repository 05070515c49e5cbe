"""Plausibility rules shared by every payload format, so JSON, NMEA and OwnTracks agree on what a
storable record is. Each rule raises `DecodeError` with a stable reason code."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from gateway.records import DecodeError

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""Anything older is a receiver that has not yet learnt the date (GPS epoch 1980, week rollover)."""

FUTURE_TOLERANCE_S = 300.0
MAX_SPEED_KMH = 400.0


def finite(name: str, value: float | None) -> float | None:
    """NaN and infinities are never data; JSON cannot carry them but large exponents and NMEA can."""
    if value is None or isinstance(value, int):  # ints are exact; math.isfinite overflows on 10**400
        return value
    if not math.isfinite(value):
        raise DecodeError("not_finite", f"{name} is {value}")
    return value


def in_range(name: str, value: float | None, low: float, high: float, *, high_open: bool = False) -> None:
    if value is None:
        return
    finite(name, value)
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise DecodeError("out_of_range", f"{name}={value} outside [{low}, {high}{bracket}")


def position(lat: float | None, lon: float | None) -> None:
    """Both or neither; in range; and never exactly (0, 0), the default of many firmwares before a
    fix. A real device at 0°N 0°E is in the Gulf of Guinea; a fleet there would lose nothing but
    a point per boot, while a fleet anywhere else would otherwise get a line to Africa per boot."""
    if (lat is None) != (lon is None):
        raise DecodeError("bad_schema", "lat and lon must be given together")
    if lat is None or lon is None:
        return
    in_range("lat", lat, -90.0, 90.0)
    in_range("lon", lon, -180.0, 180.0)
    if lat == 0.0 and lon == 0.0:
        raise DecodeError("placeholder_fix", "position is exactly (0, 0)")


def device_time(when: datetime, now: datetime, tolerance_s: float = FUTURE_TOLERANCE_S) -> datetime:
    """Device clocks drift and boot at 1980; the server clock is the reference for 'too late'."""
    if when.tzinfo is None:
        raise DecodeError("bad_time", "time has no UTC offset")
    if when < EARLIEST:
        raise DecodeError("bad_time", f"{when.isoformat()} is before {EARLIEST.date()}")
    if when > now + timedelta(seconds=tolerance_s):
        raise DecodeError("future_time", f"{when.isoformat()} is ahead of server time {now.isoformat()}")
    return when if when.tzinfo is UTC else when.astimezone(UTC)


def from_epoch(seconds: float) -> datetime:
    """Unix seconds to an aware datetime, with every way that can fail mapped to `bad_time`."""
    if not math.isfinite(seconds):
        raise DecodeError("not_finite", f"time is {seconds}")
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise DecodeError("bad_time", f"epoch seconds {seconds} not representable: {exc}") from None


def from_iso(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError("bad_time", f"not an ISO 8601 time: {text[:40]!r}") from None
    if when.tzinfo is None:
        raise DecodeError("bad_time", f"ISO time without offset: {text[:40]!r}")
    return when
