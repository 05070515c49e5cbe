"""OwnTracks (`owntracks/{user}/{device}[/...]`): the phone app as a tracker, with no firmware of ours.

Only `_type: location` becomes telemetry. Everything else the app publishes (lwt, transition,
waypoint(s), card, status, cmd, ...) raises `not_a_location`, which the gateway counts and ignores:
it is normal traffic, not an error. The exception is `encrypted`: the app's payload encryption is
switched on, and every location will be lost until it is switched off, so it is dead-lettered.

Field units follow the OwnTracks booklet: `vel` km/h, `cog` degrees, `acc`/`alt` metres, `batt`
percent, `tst` Unix seconds. A negative `vel`, `cog`, `acc` or `batt` means "not known" (the apps send -1)
and is stored as absent rather than refusing the position that came with it. A `cog` of exactly 360
is north, stored as 0. Every value is then bounded by the table all formats share (`checks.BOUNDS`).

Only a location's own fields are read: a non-location message whose fields have other types than a
location's (a string `tst` on a `transition`, say) is still just `not_a_location`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway.decoders import checks
from gateway.decoders.jsonwire import decode_struct
from gateway.decoders.results import Decoded
from kernel.records import DecodeError, Source, Telemetry


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


class _Kind(msgspec.Struct, frozen=True):
    type: str = msgspec.field(name="_type")


_decoder = msgspec.json.Decoder(Location)
_kind = msgspec.json.Decoder(_Kind)


def decode_owntracks(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    try:
        loc: Location | _Kind = decode_struct(_decoder, payload)
    except DecodeError as exc:
        if exc.reason != "bad_schema":
            raise
        # The fields may be typed for another _type: read only `_type` (a second parse, on this
        # rare path only) and refuse the message as a location only if it claims to be one.
        try:
            loc = decode_struct(_kind, payload)
        except DecodeError:
            raise DecodeError("bad_schema", "no _type: not an OwnTracks message") from None
        if loc.type == "location":
            raise
    if loc.type == "encrypted":
        raise DecodeError("bad_schema", "encrypted payload: turn off encryption in the OwnTracks app")
    if loc.type != "location":
        raise DecodeError("not_a_location", f"_type={loc.type[:40]!r}")
    assert isinstance(loc, Location)  # a _Kind is never a location (see above)
    return Decoded((to_telemetry(loc, device_id, now=now, tolerance_s=tolerance_s),))


def to_telemetry(loc: Location, device_id: str, *, now: datetime, tolerance_s: float) -> Telemetry:
    if loc.lat is None or loc.lon is None:
        raise DecodeError("bad_schema", "location without lat/lon")
    if loc.tst is None:
        raise DecodeError("bad_schema", "location without tst")
    when = checks.device_time(checks.from_epoch(loc.tst), now, tolerance_s)
    checks.position(loc.lat, loc.lon)
    cog = _unless_negative("cog", loc.cog)
    return Telemetry(
        device_id=device_id,
        time=when,
        source=Source.OWNTRACKS,
        lat=loc.lat,
        lon=loc.lon,
        altitude_m=checks.bounded("altitude_m", loc.alt, "alt"),
        speed_kmh=checks.bounded("speed_kmh", _unless_negative("vel", loc.vel), "vel"),
        heading_deg=checks.bounded("heading_deg", 0.0 if cog == 360.0 else cog, "cog"),
        accuracy_m=checks.bounded("accuracy_m", _unless_negative("acc", loc.acc), "acc"),
        battery_pct=checks.bounded("battery_pct", _unless_negative("batt", loc.batt), "batt"),
    )


def _unless_negative(name: str, value: float | None) -> float | None:
    checks.finite(name, value)
    return None if value is None or value < 0 else value
