"""OwnTracks (`owntracks/{user}/{device}[/...]`): the phone app as a tracker, with no firmware of ours.

Only `_type: location` becomes telemetry. Everything else the app publishes (lwt, transition,
waypoint(s), card, status, cmd, ...) raises `not_a_location`, which the gateway counts and ignores:
it is normal traffic, not an error. The exception is `encrypted`: the app's payload encryption is
switched on, and every location will be lost until it is switched off, so it is dead-lettered.

Field units follow the OwnTracks booklet: `vel` km/h, `cog` degrees, `acc`/`alt` metres, `batt`
percent, `tst` Unix seconds. A negative `vel` or `cog` means "not measured" and is stored as absent
rather than refusing the position that came with it.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.decoders import checks
from gateway.decoders.jsonwire import decode_struct
from gateway.decoders.results import Decoded
from gateway.records import DecodeError, Source, Telemetry


class Location(msgspec.Struct, frozen=True):
    type: str = msgspec.field(name="_type")
    lat: float | None = None
    lon: float | None = None
    tst: float | None = None
    batt: float | None = None
    vel: float | None = None
    cog: float | None = None
    acc: float | None = None
    alt: float | None = None


_decoder = msgspec.json.Decoder(Location)


def decode_owntracks(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    try:
        loc = decode_struct(_decoder, payload)
    except DecodeError as exc:
        if exc.detail.startswith("Object missing required field `_type`"):
            raise DecodeError("bad_schema", "no _type: not an OwnTracks message") from None
        raise
    if loc.type == "encrypted":
        raise DecodeError("bad_schema", "encrypted payload: turn off encryption in the OwnTracks app")
    if loc.type != "location":
        raise DecodeError("not_a_location", f"_type={loc.type[:40]!r}")
    return Decoded((to_telemetry(loc, device_id, now=now, tolerance_s=tolerance_s),))


def to_telemetry(loc: Location, device_id: str, *, now: datetime, tolerance_s: float) -> Telemetry:
    if loc.lat is None or loc.lon is None:
        raise DecodeError("bad_schema", "location without lat/lon")
    if loc.tst is None:
        raise DecodeError("bad_schema", "location without tst")
    when = checks.device_time(checks.from_epoch(loc.tst), now, tolerance_s)
    checks.position(loc.lat, loc.lon)
    vel = _unless_negative("vel", loc.vel)
    cog = _unless_negative("cog", loc.cog)
    checks.in_range("vel", vel, 0.0, checks.MAX_SPEED_KMH, high_open=True)
    checks.in_range("cog", cog, 0.0, 360.0)
    checks.in_range("batt", loc.batt, 0.0, 100.0)
    checks.in_range("acc", loc.acc, 0.0, 1e7)
    checks.in_range("alt", loc.alt, -1000.0, 100_000.0)
    return Telemetry(
        device_id=device_id,
        time=when,
        source=Source.OWNTRACKS,
        lat=loc.lat,
        lon=loc.lon,
        altitude_m=loc.alt,
        speed_kmh=vel,
        heading_deg=None if cog is None else cog % 360.0,
        accuracy_m=loc.acc,
        battery_pct=loc.batt,
    )


def _unless_negative(name: str, value: float | None) -> float | None:
    checks.finite(name, value)
    return None if value is None or value < 0 else value
