"""Plausibility rules shared by every payload format, so JSON, NMEA and OwnTracks agree on what a
storable record is. Each rule raises `DecodeError` with a stable reason code.

`BOUNDS` is the one table of numeric limits: every format checks every `Telemetry` field against it
(JSON v1 as msgspec constraints built from it, NMEA and OwnTracks through `bounded`). Each limit lies
inside what its PostgreSQL column holds (`real` to about 3.4e38, `smallint` to 32767), so a record
that passes can always be stored: a value the column cannot hold would fail the whole COPY batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from kernel.deadletters import BAD_CHAR_FREE_TEXT as _BAD_CHAR_FREE_TEXT
from kernel.records import DecodeError

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""Anything older is a receiver that has not yet learnt the date (GPS epoch 1980, week rollover)."""

FUTURE_TOLERANCE_S = 300.0
MAX_SPEED_KMH = 400.0


@dataclass(frozen=True, slots=True)
class Bound:
    """`low <= value <= high` (or `< high` when `high_open`), in the `Telemetry` field's unit."""

    low: float
    high: float
    high_open: bool = False
    column: str = "real"  # the PostgreSQL type that stores it: the limits must lie inside its range


BOUNDS: dict[str, Bound] = {
    "altitude_m": Bound(-1000.0, 100_000.0),
    "speed_kmh": Bound(0.0, MAX_SPEED_KMH, high_open=True),
    "heading_deg": Bound(0.0, 360.0, high_open=True),
    "accuracy_m": Bound(0.0, 1e7),
    "satellites": Bound(0, 255, column="smallint"),  # a receiver tracks at most a few dozen
    "hdop": Bound(0.0, 1000.0),  # receivers say 99.99 for "unknown"; negative is never a DOP
    "battery_pct": Bound(0.0, 100.0),
    "odometer_m": Bound(0.0, 1e10, column="double precision"),
}
"""Keyed by `Telemetry` field name. lat/lon are checked by `position`, which also knows (0, 0)."""


N = TypeVar("N", bound=float | None)


def bounded(name: str, value: N, label: str | None = None) -> N:
    """Check a `Telemetry` field against `BOUNDS`; `label` is the format's own name for the detail."""
    if value is not None:
        b = BOUNDS[name]
        # the usual good value in one comparison; NaN fails it and in_range names the reason
        if not (b.low <= value < b.high if b.high_open else b.low <= value <= b.high):
            in_range(label or name, value, b.low, b.high, high_open=b.high_open)
    return value


# C0 and C1 control characters (NUL included) and lone surrogates: PostgreSQL `text` refuses NUL,
# msgpack and UTF-8 refuse surrogates, and none of them is ever part of a fault code or a message.
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text(name: str, value: str, *, free_text: bool = False) -> str:
    """Refuse a string the database cannot hold or a reader would be misled by (`bad_string`).
    `free_text` (a human message) may hold tab, newline and carriage return."""
    m = (_BAD_CHAR_FREE_TEXT if free_text else _BAD_CHAR).search(value)
    if m is not None:
        raise DecodeError("bad_string", f"{name} holds control character U+{ord(m[0]):04X} at {m.start()}")
    return value


def has_control(value: str) -> bool:
    return _BAD_CHAR.search(value) is not None


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
