"""Readings to wire bytes in the three device formats of protocol v1, plus the topics they go to.

Pure functions: the same reading always gives the same bytes, which is what makes a seeded run
repeatable down to the payload. Each format also fixes the resolution of its timestamp
(`time_key`), because a record is identified by (device, time) and two reports that round to the
same instant are one record to the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from simulators.vehicle import Reading

KNOTS_PER_KMH = 1 / 1.852


class Format(StrEnum):
    JSON = "json"
    NMEA = "nmea"
    OWNTRACKS = "owntracks"


def topic_for(fmt: Format, device_id: str) -> str:
    if fmt is Format.JSON:
        return f"fleet/{device_id}/telemetry"
    if fmt is Format.NMEA:
        return f"fleet/{device_id}/nmea"
    return f"owntracks/{device_id}/bike"


def time_key(fmt: Format, t: float) -> float:
    """The instant a format can carry: ms for JSON, 1/100 s for NMEA, whole seconds for OwnTracks."""
    if fmt is Format.JSON:
        return round(t, 3)
    if fmt is Format.NMEA:
        return round(t, 2)
    return float(math.floor(t))


# --- JSON telemetry v1 -------------------------------------------------------------------------


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(round(t, 3), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(reading: Reading, device_id: str | None, *, epoch_ts: bool, single: bool = True) -> dict[str, Any]:
    """One v1 record. `epoch_ts` picks the numeric form of `ts`: fleets send both, the decoder takes both."""
    rec: dict[str, Any] = {"v": 1} if single else {}
    if device_id is not None:
        rec["id"] = device_id
    rec["ts"] = round(reading.time, 3) if epoch_ts else iso_time(reading.time)
    if reading.fix and reading.lat is not None and reading.lon is not None:
        rec["lat"] = reading.lat
        rec["lon"] = reading.lon
        if reading.alt_m is not None:
            rec["alt_m"] = reading.alt_m
        if reading.acc_m is not None:
            rec["acc_m"] = reading.acc_m
        if reading.hdop is not None:
            rec["hdop"] = reading.hdop
    rec.update(
        speed_kmh=reading.speed_kmh,
        heading_deg=reading.heading_deg,
        fix=reading.fix,
        sats=reading.sats,
        battery_pct=reading.battery_pct,
        odometer_m=reading.odometer_m,
        locked=reading.locked,
    )
    if reading.faults:
        rec["faults"] = list(reading.faults)
    if reading.alarm:
        rec["alarm"] = True  # not a v1 field: decoders ignore it, a dashboard tapping MQTT sees it
    return rec


def encode_json(reading: Reading, device_id: str, *, epoch_ts: bool = False) -> bytes:
    return orjson.dumps(record(reading, device_id, epoch_ts=epoch_ts))


def encode_json_batches(
    readings: Sequence[Reading], device_id: str, *, epoch_ts: bool = False, max_bytes: int = 16_000
) -> list[bytes]:
    """Buffered records as v1 batches, split so no payload exceeds `max_bytes` nor 1000 records.

    A tracker that was offline sends its backlog like this; the gateway's payload limit applies to
    batches too, so a long backlog goes out as several messages.
    """
    out: list[bytes] = []
    parts: list[bytes] = []
    size = len(b'{"v":1,"records":[]}')
    for reading in readings:
        part = orjson.dumps(record(reading, device_id, epoch_ts=epoch_ts, single=False))
        if parts and (size + len(part) + 1 > max_bytes or len(parts) >= 1000):
            out.append(_batch(parts))
            parts, size = [], len(b'{"v":1,"records":[]}')
        parts.append(part)
        size += len(part) + 1
    if parts:
        out.append(_batch(parts))
    return out


def _batch(parts: Iterable[bytes]) -> bytes:
    return b'{"v":1,"records":[' + b",".join(parts) + b"]}"


# --- NMEA 0183 -----------------------------------------------------------------------------------


def nmea_checksum(body: str) -> str:
    """XOR of every character between `$` and `*`, as two upper-case hex digits."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body)}"


def _nmea_angle(value: float, degree_digits: int) -> str:
    # Round once in 1e-5 minutes so 59.999996' never prints as 60.00000'.
    total = round(abs(value) * 60 * 100_000)
    degrees, minutes = divmod(total, 60 * 100_000)
    return f"{degrees:0{degree_digits}d}{minutes // 100_000:02d}.{minutes % 100_000:05d}"


def nmea_lat(lat: float) -> tuple[str, str]:
    return _nmea_angle(lat, 2), "N" if lat >= 0 else "S"


def nmea_lon(lon: float) -> tuple[str, str]:
    return _nmea_angle(lon, 3), "E" if lon >= 0 else "W"


def encode_nmea(reading: Reading, talker: str = "GP") -> bytes:
    """An RMC, a GGA and a VTG sentence for one fix, CR LF terminated, as a receiver emits them."""
    return ("\r\n".join(nmea_sentences(reading, talker)) + "\r\n").encode("ascii")


def nmea_sentences(reading: Reading, talker: str = "GP") -> list[str]:
    when = datetime.fromtimestamp(time_key(Format.NMEA, reading.time), UTC)
    hms = f"{when:%H%M%S}.{when.microsecond // 10_000:02d}"
    dmy = f"{when:%d%m%y}"
    if not reading.fix or reading.lat is None or reading.lon is None:
        return [
            sentence(f"{talker}RMC,{hms},V,,,,,,,{dmy},,,N"),
            sentence(f"{talker}GGA,{hms},,,,,0,{reading.sats:02d},,,,,,,"),
            sentence(f"{talker}VTG,,T,,M,,N,,K,N"),
        ]
    lat, ns = nmea_lat(reading.lat)
    lon, ew = nmea_lon(reading.lon)
    knots = f"{reading.speed_kmh * KNOTS_PER_KMH:.2f}"
    course = f"{reading.heading_deg:.1f}"
    hdop = f"{reading.hdop:.2f}" if reading.hdop is not None else ""
    alt = f"{reading.alt_m:.1f}" if reading.alt_m is not None else ""
    return [
        sentence(f"{talker}RMC,{hms},A,{lat},{ns},{lon},{ew},{knots},{course},{dmy},,,A"),
        sentence(f"{talker}GGA,{hms},{lat},{ns},{lon},{ew},1,{reading.sats:02d},{hdop},{alt},M,39.7,M,,"),
        sentence(f"{talker}VTG,{course},T,,M,{knots},N,{reading.speed_kmh:.1f},K,A"),
    ]


# --- OwnTracks -----------------------------------------------------------------------------------


def encode_owntracks(reading: Reading, tid: str) -> bytes | None:
    """An OwnTracks `location`; None without a fix, because OwnTracks has no way to say "no fix"."""
    if not reading.fix or reading.lat is None or reading.lon is None:
        return None
    msg: dict[str, Any] = {
        "_type": "location",
        "tid": tid,
        "tst": int(time_key(Format.OWNTRACKS, reading.time)),
        "lat": reading.lat,
        "lon": reading.lon,
        "acc": round(reading.acc_m or 0),
        "vel": round(reading.speed_kmh),
        "cog": round(reading.heading_deg) % 360,
        "batt": round(reading.battery_pct),
        "conn": "m",
        "t": "t" if reading.speed_kmh > 0 else "p",
    }
    if reading.alt_m is not None:
        msg["alt"] = round(reading.alt_m)
    return orjson.dumps(msg)
