"""From consecutive positions to zone events: enter, exit, cross, dwell and violations.

How it stays vectorized although hysteresis is sequential: for one (device, zone) pair the state
after a point is forced to 1 by a point inside the zone, forced to 0 by a point outside the grown
zone, and otherwise held. So the state sequence is a forward fill of "last forced value", which is
`np.maximum.accumulate` over a table with one row per (device, zone, point) that matters: points in
the grown zone, the first point after leaving it, and one leading row per pair carrying the stored
state. Enter and exit are the rows where the filled value changes. No loop over points or zones;
Python loops only over the events and devices that come out.

Decisions (also in docs/geofence.md):
- A device never seen before (no stored state) gets `enter` events for the zones its first point is
  in, marked `first_fix` in the detail (`enter_on_first_fix=False` silences them), and no no-ride
  violation for it: appearing somewhere is not riding in. A device whose state was restored after a
  worker restart is not new, so nothing fires that did not happen.
- Points not newer than the stored state, or more than `max_future_s` ahead of `now`, are ignored.
- `cross`: the straight segment between two consecutive reports touches a zone while the device was
  in it at neither end. Segments spanning more than `cross_max_gap_s` are not tested: after a long
  gap the straight line says nothing about the path.
- Violations fire on the rising edge of their condition: locked inside no_parking, speed above the
  limit inside slow, entering or crossing no_ride, leaving service_area (exit).
- A zone removed while a device is in it is dropped from the state silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

from geofence.batch import PositionBatch
from geofence.state import DeviceState
from geofence.transition_table import Entries, PointColumns, build_entries
from geofence.zones import ZoneKind
from geofence.zoneset import KIND_CODES, ZoneSet


class EventKind(StrEnum):
    ENTER = "enter"
    EXIT = "exit"
    CROSS = "cross"
    DWELL = "dwell"
    VIOLATION = "violation"


class Violation(StrEnum):
    LOCKED_IN_NO_PARKING = "locked_in_no_parking"
    SPEEDING_IN_SLOW_ZONE = "speeding_in_slow_zone"
    ENTERED_NO_RIDE = "entered_no_ride"
    CROSSED_NO_RIDE = "crossed_no_ride"
    LEFT_SERVICE_AREA = "left_service_area"


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    device_id: str
    zone_id: str
    kind: EventKind
    time: datetime
    lon: float
    lat: float
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class TransitionParams:
    dwell_s: float = 300.0
    cross_max_gap_s: float = 600.0
    max_future_s: float = 300.0
    enter_on_first_fix: bool = True


_NO_PARKING = KIND_CODES[ZoneKind.NO_PARKING]
_NO_RIDE, _SERVICE = KIND_CODES[ZoneKind.NO_RIDE], KIND_CODES[ZoneKind.SERVICE_AREA]


def transitions(
    prev: Mapping[str, DeviceState],
    batch: PositionBatch,
    zones: ZoneSet,
    now: float,
    params: TransitionParams | None = None,
) -> tuple[list[ZoneEvent], dict[str, DeviceState]]:
    """Events for this batch and the new state of every device that had a usable point in it.

    `prev` needs the stored state of the batch's devices only (missing = never seen).
    """
    params = params or TransitionParams()
    pts = PointColumns.select(batch, prev, now + params.max_future_s)
    if len(pts) == 0:
        return [], {}
    ent = build_entries(pts, prev, zones, params.dwell_s)
    events = _events(pts, ent, zones, params)
    events += _crossings(pts, ent, zones, params)
    events.sort(key=lambda e: (e.time, e.device_id, e.zone_id, e.kind))
    return events, ent.new_states(pts, zones)


def _events(pts: PointColumns, ent: Entries, zones: ZoneSet, params: TransitionParams) -> list[ZoneEvent]:
    s, prev_s, init = ent.state, ent.prev_state, ent.initial
    p = np.where(init, 0, ent.point)
    kind = zones.kind[ent.zone]
    first_fix = pts.first[p] & ~pts.has_state[pts.device[p]] & ~init
    enter = (s == 1) & (prev_s == 0) & ~init
    exit_ = (s == 0) & (prev_s == 1) & ~init
    made = _Maker(pts, zones)
    ff = first_fix.tolist()
    for i in np.flatnonzero(enter & (~first_fix | params.enter_on_first_fix)).tolist():
        made.add(ent, i, EventKind.ENTER, {"first_fix": True} if ff[i] else {})
    for i in np.flatnonzero(enter & ~first_fix & (kind == _NO_RIDE)).tolist():
        made.add(ent, i, EventKind.VIOLATION, {"violation": Violation.ENTERED_NO_RIDE})
    for i in np.flatnonzero(exit_).tolist():
        made.add(ent, i, EventKind.EXIT, {})
    for i in np.flatnonzero(exit_ & (kind == _SERVICE)).tolist():
        made.add(ent, i, EventKind.VIOLATION, {"violation": Violation.LEFT_SERVICE_AREA})
    for i in np.flatnonzero(ent.dwell).tolist():
        made.add(ent, i, EventKind.DWELL, {"since": float(ent.entered_at[i])})
    for i in np.flatnonzero(ent.violation_rising).tolist():
        if kind[i] == _NO_PARKING:
            detail: dict[str, Any] = {"violation": Violation.LOCKED_IN_NO_PARKING}
        else:
            detail = {
                "violation": Violation.SPEEDING_IN_SLOW_ZONE,
                "speed_kmh": float(pts.speed[p[i]]),
                "limit_kmh": float(zones.speed_limit[ent.zone[i]]),
            }
        made.add(ent, i, EventKind.VIOLATION, detail)
    return made.events()


class _Maker:
    """Events gathered as (point, zone slot, kind, detail), then built in one pass: the columns are
    read as Python lists once and each zone's id and kind once, not per event through numpy
    scalars (in the worst case, every position a transition, building events was most of the time)."""

    def __init__(self, pts: PointColumns, zones: ZoneSet) -> None:
        self._pts, self._zones = pts, zones
        self._rows: list[tuple[int, int, EventKind, dict[str, Any]]] = []

    def add(self, ent: Entries, i: int, kind: EventKind, detail: dict[str, Any]) -> None:
        self._rows.append((int(ent.point[i]), int(ent.zone[i]), kind, detail))

    def add_point(self, p: int, slot: int, kind: EventKind, detail: dict[str, Any]) -> None:
        self._rows.append((p, slot, kind, detail))

    def events(self) -> list[ZoneEvent]:
        if not self._rows:
            return []
        pts, zones = self._pts, self._zones
        index = np.fromiter((r[0] for r in self._rows), np.int64, len(self._rows))
        device = pts.device[index].tolist()
        when, lon, lat = pts.time[index].tolist(), pts.lon[index].tolist(), pts.lat[index].tolist()
        about: dict[int, tuple[str, str]] = {}
        out = []
        for k, (_p, slot, kind, detail) in enumerate(self._rows):
            if slot not in about:
                zone = zones.zone(slot)
                about[slot] = (zone.id, zone.kind.value)
            zone_id, zone_kind = about[slot]
            out.append(ZoneEvent(pts.device_ids[device[k]], zone_id, kind, datetime.fromtimestamp(when[k], UTC),
                                 lon[k], lat[k], {"zone_kind": zone_kind, **detail}))  # fmt: skip
        return out


def _crossings(pts: PointColumns, ent: Entries, zones: ZoneSet, params: TransitionParams) -> list[ZoneEvent]:
    """Zones passed through between two reports: the segment touches the zone, the device was in it
    at neither end (state after hysteresis, so grazing a zone one was just in is not a cross)."""
    b = np.arange(len(pts))
    from_state = pts.first & pts.has_state[pts.device]
    dev = pts.device
    ax = np.where(pts.first, pts.state_lon[dev], np.roll(pts.lon, 1))
    ay = np.where(pts.first, pts.state_lat[dev], np.roll(pts.lat, 1))
    at = np.where(pts.first, pts.state_time[dev], np.roll(pts.time, 1))
    usable = (~pts.first | from_state) & (pts.time - at <= params.cross_max_gap_s)
    usable &= (ax != pts.lon) | (ay != pts.lat)
    b = b[usable]
    seg, slot = zones.segment_hits(ax[b], ay[b], pts.lon[b], pts.lat[b])
    if seg.size == 0:
        return []
    end = b[seg]
    s_end = ent.state_at(end, slot)
    s_start = np.where(pts.first[end], ent.stored_member(dev[end], slot), ent.state_at(end - 1, slot))
    made = _Maker(pts, zones)
    for k in np.flatnonzero((s_end == 0) & (s_start == 0)).tolist():
        p, z = int(end[k]), int(slot[k])
        start = {"from_lon": float(ax[p]), "from_lat": float(ay[p]), "from_time": float(at[p])}
        made.add_point(p, z, EventKind.CROSS, start)
        if zones.kind[z] == _NO_RIDE:
            made.add_point(p, z, EventKind.VIOLATION, {"violation": Violation.CROSSED_NO_RIDE})
    return made.events()


__all__ = ["EventKind", "TransitionParams", "Violation", "ZoneEvent", "transitions"]
