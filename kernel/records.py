"""Types that flow between pipeline stages.

Every stage boundary carries frozen records (msgspec Structs where one is built per message or per
record, since they cost a fraction of a frozen dataclass to build; dataclasses elsewhere), so a
stage cannot mutate what an earlier stage handed on, and the pure core never depends on a transport
library's message class.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import msgspec


class Source(StrEnum):
    """Which device protocol produced a record; stored so odd data can be traced to its decoder."""

    JSON = "json"
    NMEA = "nmea"
    OWNTRACKS = "owntracks"


class RawMessage(msgspec.Struct, frozen=True):
    """One MQTT message exactly as the broker delivered it, stamped with our own clock."""

    topic: str
    payload: bytes
    received_at: datetime


class Telemetry(msgspec.Struct, frozen=True, array_like=True):
    """One decoded device report: a position, a state snapshot, or both.

    A msgspec Struct rather than a dataclass because one is built for every record on the hot path:
    construction costs about a tenth of a frozen dataclass's and msgpack encoding is native.
    `array_like`: in the Redis streams a record is an array in field order (121 bytes against 252
    as a map, and every record passes through Redis twice). So a new field goes at the end, with a
    default; a reader ignores trailing fields it does not know.

    Units are fixed here once so that no later stage converts: degrees WGS84, km/h, metres, percent.
    `time` is the device's own clock (UTC) and together with `device_id` identifies the record:
    a QoS 1 redelivery or a firmware resend carries the same pair and is stored once.
    """

    device_id: str
    time: datetime
    source: Source
    lat: float | None = None
    lon: float | None = None
    altitude_m: float | None = None
    speed_kmh: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None
    fix: int | None = None  # 0 no fix, 2 = 2D, 3 = 3D (as NMEA/gpsd)
    satellites: int | None = None
    hdop: float | None = None
    battery_pct: float | None = None
    odometer_m: float | None = None
    locked: bool | None = None
    faults: tuple[str, ...] = ()

    @property
    def has_position(self) -> bool:
        return self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or the parts of one) we refused, kept with its raw bytes so nothing accepted-or-not
    is silently gone. Built by `kernel.deadletters.letter`, which bounds it: `payload` is at most
    the first KiB of the refused bytes, `size` their full length and `sha256` their hash (32 bytes);
    `count` is how many lines or records of one message the letter stands for.

    In the stream a letter is a map: the last three fields came later, and a letter without them
    (from an older gateway) is read with the defaults and bounded when it is stored."""

    topic: str
    payload: bytes
    reason: str
    received_at: datetime
    device_id: str | None = None
    detail: str = ""
    count: int = 1
    size: int = 0
    sha256: bytes = b""  # empty: not bounded yet (`size` then means nothing)


class DecodeError(ValueError):
    """A payload that cannot become telemetry. `reason` is a short stable code used in dead letters
    and counters (`bad_json`, `bad_checksum`, `out_of_range`, ...); the message is for humans."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Reject(msgspec.Struct, frozen=True):
    """One refused part of an otherwise readable message (an NMEA line or epoch, one record of a
    JSON batch), with its own raw bytes so the dead letter shows exactly what was refused."""

    reason: str
    detail: str
    raw: bytes

    @classmethod
    def of(cls, exc: DecodeError, raw: bytes) -> Reject:
        return cls(exc.reason, exc.detail, raw)
