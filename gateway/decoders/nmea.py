"""Raw NMEA 0183 (`fleet/{device_id}/nmea`): one or more sentences, one per line, to one fix per epoch.

A receiver reports each epoch (one measurement instant) in several sentences: RMC (position, speed,
course, date), GGA (position, quality, satellites, HDOP, altitude), GLL, VTG (speed, course), ZDA
(date) and GSA (2D/3D, HDOP), from any talker (GP, GN, GL, GA, GB, BD, ...). Sentences are grouped by
their UTC time of day; sentences without a time (VTG, GSA) join the epoch of the timed sentence
before them, or the first one in the message. One `Telemetry` comes out per epoch with a fix.

What is not a position, and becomes a `Reject` of the whole epoch (its lines as raw bytes):
- `no_fix`: RMC/GLL status V, GGA quality 0 or empty, FAA mode N, or no coordinates at all;
- `simulated_fix`: GGA quality 8 (simulator) or 7 (manual input), FAA mode S or M, in ANY sentence
  of the epoch, since such a receiver is not measuring anything;
- `placeholder_fix`: latitude exactly ±90° (MTK chips report 89°60'N before their first fix) or
  exactly (0, 0);
- `bad_time`, `future_time`, `out_of_range` as for every format.
An epoch is a fix when at least one of its position sentences says so (and none says simulated);
its position comes from the valid GGA, else RMC, else GLL. Receivers agree within an epoch; when
they do not (an MTK chip may send GGA quality 1 before its RMC turns A), the positive sentence is the
one that measured.

A line that is not NMEA, has a missing or wrong checksum (`bad_checksum`), or malformed fields
(`bad_schema`) becomes a `Reject` of that line alone; the rest of the message still counts, so one
line garbled on a serial link does not cost the other epochs. Proprietary `$P...` sentences and
sentence types without position data (GSV, GST, ...) are skipped without a reject.

The date: GGA and GLL carry only the time of day. The epoch takes its date from an RMC or ZDA of
the same epoch; else from the nearest dated epoch in the same message (previous first, then next);
else from the server's `now`. In the last two cases the day (before, same, after) is chosen that puts
the fix closest to its anchor, so 23:59:59 received at 00:00:02 lands on the previous day.
No state is kept between messages: publish whole epochs (ideally one per message).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta

from gateway.decoders import checks
from gateway.decoders.nmea_lines import Observation, read_line
from gateway.decoders.results import Decoded
from kernel.records import DecodeError, Reject, Source, Telemetry

_POSITION_PRIORITY = {"GGA": 0, "RMC": 1, "GLL": 2}


def decode_nmea(payload: bytes, device_id: str, *, now: datetime, tolerance_s: float) -> Decoded:
    lines = [line.strip() for line in payload.split(b"\n")]
    lines = [line for line in lines if line]
    if not lines:
        raise DecodeError("empty", "no NMEA lines")
    observations: list[Observation] = []
    rejects: list[Reject] = []
    for line in lines:
        try:
            obs = read_line(line)
        except DecodeError as exc:
            rejects.append(Reject.of(exc, line))
            continue
        if obs is not None:
            observations.append(obs)
    records: list[Telemetry] = []
    for epoch, when in _dated(_epochs(observations), now):
        try:
            records.append(_fix(epoch, when, device_id, now=now, tolerance_s=tolerance_s))
        except DecodeError as exc:
            rejects.append(Reject.of(exc, b"\n".join(o.raw for o in epoch)))
        except _NoPosition:
            pass
    return Decoded(tuple(records), tuple(rejects))


class _NoPosition(Exception):
    """The epoch has no position sentence (only ZDA/GSA/VTG): nothing to store, nothing wrong."""


def _epochs(observations: Iterable[Observation]) -> list[tuple[int, list[Observation]]]:
    epochs: dict[int, list[Observation]] = {}
    pending: list[Observation] = []
    current: int | None = None
    for obs in observations:
        if obs.tod_us is None:
            (pending if current is None else epochs[current]).append(obs)
            continue
        current = obs.tod_us
        group = epochs.setdefault(current, [])
        group.extend(pending)
        pending.clear()
        group.append(obs)
    return list(epochs.items())


def _dated(epochs: list[tuple[int, list[Observation]]], now: datetime) -> list[tuple[list[Observation], datetime]]:
    """Attach a full UTC datetime to each epoch (see the module docstring for the rule)."""
    own: list[datetime | None] = []
    for tod, group in epochs:
        day = next((o.day for o in group if o.day is not None), None)
        own.append(None if day is None else datetime.combine(day, _time(tod), tzinfo=UTC))
    out: list[tuple[list[Observation], datetime]] = []
    for i, (tod, group) in enumerate(epochs):
        when = own[i]
        if when is None:
            before = next((w for w in reversed(own[:i]) if w is not None), None)
            after = next((w for w in own[i + 1 :] if w is not None), None)
            when = _nearest(tod, before or after or now)
        out.append((group, when))
    return out


def _time(tod_us: int) -> time:
    seconds, micro = divmod(tod_us, 1_000_000)
    return time(seconds // 3600, seconds // 60 % 60, seconds % 60, micro)


def _nearest(tod_us: int, anchor: datetime) -> datetime:
    anchor = anchor.astimezone(UTC)
    same_day = datetime.combine(anchor.date(), _time(tod_us), tzinfo=UTC)
    candidates = (same_day - timedelta(days=1), same_day, same_day + timedelta(days=1))
    return min(candidates, key=lambda c: abs(c - anchor))


def _fix(epoch: list[Observation], when: datetime, device_id: str, *, now: datetime, tolerance_s: float) -> Telemetry:
    positional = [o for o in epoch if o.kind in _POSITION_PRIORITY]
    if not positional:
        raise _NoPosition
    simulated = next((o for o in epoch if o.verdict == "simulated"), None)
    if simulated is not None:
        raise DecodeError("simulated_fix", f"{simulated.kind} {simulated.why}")
    valid = [o for o in positional if o.verdict == "valid" and o.lat is not None]
    if not valid:
        why = "; ".join(f"{o.kind} {o.why}" for o in positional)
        raise DecodeError("no_fix", why)
    best = min(valid, key=lambda o: _POSITION_PRIORITY[o.kind])
    if best.lat is not None and abs(best.lat) == 90.0:
        raise DecodeError("placeholder_fix", f"latitude {best.lat} (receiver power-up placeholder)")
    checks.position(best.lat, best.lon)
    when = checks.device_time(when, now, tolerance_s)
    motion = [o for o in epoch if o.kind in ("RMC", "VTG") and o.verdict != "no_fix"]
    speed = next((o.speed_kmh for o in motion if o.speed_kmh is not None), None)
    heading = next((o.heading_deg for o in motion if o.heading_deg is not None), None)
    gga = next((o for o in valid if o.kind == "GGA"), None)
    hdop = gga.hdop if gga and gga.hdop is not None else _first(o.hdop for o in epoch if o.kind == "GSA")
    # The bounds every format shares; an epoch with an impossible value (a course over 360, 300
    # satellites, a negative HDOP) is refused whole as `out_of_range`: its receiver is not reporting
    # a measurement. A course of exactly 360 is north.
    checks.bounded("speed_kmh", speed, "speed")
    checks.bounded("heading_deg", 0.0 if heading == 360.0 else heading, "course")
    altitude = checks.bounded("altitude_m", gga.altitude_m if gga else None, "altitude")
    satellites = checks.bounded("satellites", gga.satellites if gga else None)
    checks.bounded("hdop", hdop)
    return Telemetry(
        device_id=device_id,
        time=when,
        source=Source.NMEA,
        lat=best.lat,
        lon=best.lon,
        altitude_m=altitude,
        speed_kmh=speed,
        heading_deg=None if heading is None else heading % 360.0,  # 360 -> 0
        fix=_fix_dimension(epoch, gga),
        satellites=satellites,
        hdop=hdop,
    )


def _first(values: Iterable[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _fix_dimension(epoch: list[Observation], gga: Observation | None) -> int:
    """GSA's 2D/3D when present; else a GGA with altitude and 4+ satellites is 3D; else 2D."""
    gsa = max((o.mode for o in epoch if o.kind == "GSA" and o.mode in (2, 3)), default=None)
    if gsa is not None:
        return gsa
    if gga and gga.altitude_m is not None and (gga.satellites or 0) >= 4:
        return 3
    return 2
