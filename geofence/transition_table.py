"""The (device, zone, point) table behind `geofence.transitions`, built and forward-filled in numpy.

Rows: for each (device, zone) pair that matters in this batch, one leading row carrying the stored
state, then one row per point that forces or holds the state (inside the zone: 1; inside only the
grown zone: hold; first point after leaving the grown zone: 0). Rows are sorted by pair, then point,
so "state after each row" is a forward fill and every derived quantity (entry time of the current
stay, dwell, rising edges of violation conditions) is a running maximum over row numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from geofence.batch import LOCKED, PositionBatch
from geofence.state import DeviceState, Membership
from geofence.zones import ZoneKind
from geofence.zoneset import KIND_CODES, ZoneSet

_NO_PARKING, _SLOW = KIND_CODES[ZoneKind.NO_PARKING], KIND_CODES[ZoneKind.SLOW]


@dataclass(frozen=True, slots=True)
class PointColumns:
    """The usable points of a batch, sorted by device then time, with each device's stored state."""

    device_ids: tuple[str, ...]
    device: np.ndarray
    time: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    speed: np.ndarray
    locked: np.ndarray
    first: np.ndarray  # first point of its device in this batch
    last: np.ndarray
    has_state: np.ndarray  # per device index
    state_time: np.ndarray
    state_lon: np.ndarray
    state_lat: np.ndarray

    def __len__(self) -> int:
        return len(self.device)

    @classmethod
    def select(cls, batch: PositionBatch, prev: Mapping[str, DeviceState], latest: float) -> PointColumns:
        """Drop points from the future, points not newer than the stored state, and repeats."""
        states = [prev.get(d) for d in batch.device_ids]
        has = np.array([s is not None for s in states], dtype=bool)
        st_time = np.array([s.time if s else -math.inf for s in states], dtype=np.float64)
        st_lon = np.array([s.lon if s else math.nan for s in states], dtype=np.float64)
        st_lat = np.array([s.lat if s else math.nan for s in states], dtype=np.float64)
        dev, t = batch.device, batch.time
        keep = np.flatnonzero((t <= latest) & (t > st_time[dev]) if len(dev) else np.zeros(0, bool))
        order = keep[np.lexsort((t[keep], dev[keep]))]
        d, ts = dev[order], t[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = (d[1:] == d[:-1]) & (ts[1:] == ts[:-1])
        order = order[~repeat]
        d = dev[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = d[1:] != d[:-1]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = d[1:] != d[:-1]
        return cls(
            batch.device_ids,
            d,
            t[order],
            batch.lon[order],
            batch.lat[order],
            batch.speed_kmh[order],
            batch.locked[order],
            first,
            last,
            has,
            st_time,
            st_lon,
            st_lat,
        )


@dataclass(frozen=True, slots=True)
class Entries:
    width: int  # zone slots per device in a pair key
    group: np.ndarray  # device * width + zone
    zone: np.ndarray
    point: np.ndarray  # -1 on the leading row
    initial: np.ndarray
    state: np.ndarray  # after the row
    prev_state: np.ndarray
    entered_at: np.ndarray  # start of the current stay (NaN when out)
    dwell: np.ndarray  # a dwell event fires on this row
    dwell_fired: np.ndarray  # the current stay's dwell has fired by this row
    violating: np.ndarray  # the zone's violation condition holds at this row
    violation_rising: np.ndarray
    point_keys: np.ndarray  # sorted point * width + zone of the point rows
    point_state: np.ndarray
    stored_keys: np.ndarray  # sorted device * width + zone of stored memberships

    def state_at(self, point: np.ndarray, zone: np.ndarray) -> np.ndarray:
        """State after `point` for `zone`; a point without a row is outside (see module docstring)."""
        return _lookup(self.point_keys, self.point_state, point * self.width + zone)

    def stored_member(self, device: np.ndarray, zone: np.ndarray) -> np.ndarray:
        keys = device * self.width + zone
        pos = np.minimum(np.searchsorted(self.stored_keys, keys), max(len(self.stored_keys) - 1, 0))
        return (self.stored_keys[pos] == keys).astype(np.int8) if len(self.stored_keys) else keys * 0

    def new_states(self, pts: PointColumns, zones: ZoneSet) -> dict[str, DeviceState]:
        last = np.ones(len(self.group), dtype=bool)
        last[:-1] = self.group[1:] != self.group[:-1]
        members: dict[int, list[Membership]] = {}
        for i in np.flatnonzero(last & (self.state == 1)):
            members.setdefault(int(self.group[i] // self.width), []).append(
                Membership(
                    zones.zone(int(self.zone[i])).id,
                    float(self.entered_at[i]),
                    bool(self.dwell_fired[i]),
                    bool(self.violating[i]),
                )
            )
        out = {}
        for p in np.flatnonzero(pts.last):
            d = int(pts.device[p])
            device_id = pts.device_ids[d]
            zs = tuple(sorted(members.get(d, []), key=lambda m: m.zone_id))
            out[device_id] = DeviceState(device_id, float(pts.time[p]), float(pts.lon[p]), float(pts.lat[p]), zs)
        return out


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int8)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0).astype(np.int8)


def _stored(pts: PointColumns, prev: Mapping[str, DeviceState], zones: ZoneSet) -> tuple[np.ndarray, ...]:
    """Stored memberships of the batch's devices, as columns (device, slot, entered, fired, violating)."""
    rows = []
    for d in np.unique(pts.device):
        state = prev.get(pts.device_ids[d])
        for m in state.zones if state else ():
            slot = zones.slot(m.zone_id)
            if slot is not None:
                rows.append((int(d), slot, m.entered_at, m.dwell_fired, m.violating))
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    dtypes = (np.int64, np.int64, np.float64, bool, bool)
    return tuple(np.array(c, dtype=t) for c, t in zip(cols, dtypes, strict=True))


def build_entries(pts: PointColumns, prev: Mapping[str, DeviceState], zones: ZoneSet, dwell_s: float) -> Entries:
    width = max(zones.size, 1)
    ip, iz = zones.inner.locate(pts.lon, pts.lat)
    op, oz = (ip, iz) if zones.outer is zones.inner else zones.outer.locate(pts.lon, pts.lat)
    inner = np.unique(ip * width + iz)
    touch = np.union1d(inner, op * width + oz)
    forced = np.where(_lookup(inner, np.ones(len(inner), np.int8), touch) == 1, 1, -1).astype(np.int8)
    m_dev, m_zone, m_entered, m_fired, m_violating = _stored(pts, prev, zones)
    first_point = np.full(len(pts.device_ids), -1, dtype=np.int64)
    first_point[pts.device[pts.first]] = np.flatnonzero(pts.first)
    leave = np.union1d(touch[~pts.last[touch // width]] + width, first_point[m_dev] * width + m_zone)
    leave = np.setdiff1d(leave, touch, assume_unique=True)
    keys = np.concatenate([touch, leave])
    point_forced = np.concatenate([forced, np.zeros(len(leave), np.int8)])
    point, zone = keys // width, keys % width
    m_keys = m_dev * width + m_zone
    m_order = np.argsort(m_keys)
    stored_keys = m_keys[m_order]
    groups = np.union1d(pts.device[point] * width + zone, stored_keys)
    # a sentinel after the last stored key keeps every lookup position valid
    pos = np.searchsorted(stored_keys, groups)
    g_member = np.append(stored_keys, -1)[pos] == groups
    g_entered = np.where(g_member, np.append(m_entered[m_order], np.nan)[pos], np.nan)
    g_fired = g_member & np.append(m_fired[m_order], False)[pos]
    g_violating = g_member & np.append(m_violating[m_order], False)[pos]

    group = np.concatenate([groups, pts.device[point] * width + zone])
    row_point = np.concatenate([np.full(len(groups), -1, np.int64), point])
    order = np.lexsort((row_point, group))
    group, row_point = group[order], row_point[order]
    initial = row_point < 0
    value = np.concatenate([g_member.astype(np.int8), point_forced])[order]
    state = value[np.maximum.accumulate(np.where(value >= 0, np.arange(len(value)), 0))]
    prev_state = np.roll(state, 1)
    prev_state[initial] = state[initial]
    p = np.maximum(row_point, 0)
    t = np.where(initial, np.nan, pts.time[p])
    enter = (state == 1) & (prev_state == 0) & ~initial
    start = np.maximum.accumulate(np.where(initial | enter, np.arange(len(state)), 0))
    init_entered = np.concatenate([g_entered, np.full(len(point), np.nan)])[order]
    entered_at = np.where(state == 1, np.where(initial[start], init_entered[start], t[start]), np.nan)
    fired0 = np.concatenate([g_fired, np.zeros(len(point), bool)])[order]
    due = (state == 1) & ~initial & (t - entered_at >= dwell_s)
    mark = np.maximum.accumulate(np.where(due | fired0, np.arange(len(state)), -1))
    before = np.concatenate([[-1], mark[:-1]])
    dwell = due & (before < start)
    zone_sorted = group % width
    kind = zones.kind[zone_sorted]
    cond = (
        (state == 1)
        & ~initial
        & (
            ((kind == _NO_PARKING) & (pts.locked[p] == LOCKED))
            | ((kind == _SLOW) & (pts.speed[p] > zones.speed_limit[zone_sorted]))
        )
    )
    violating = np.where(initial, np.concatenate([g_violating, np.zeros(len(point), bool)])[order], cond)
    rising = cond & ~np.roll(violating, 1)
    is_point = ~initial
    pk = row_point[is_point] * width + zone_sorted[is_point]
    pk_order = np.argsort(pk)
    return Entries(
        width=width,
        group=group,
        zone=zone_sorted,
        point=row_point,
        initial=initial,
        state=state,
        prev_state=prev_state,
        entered_at=entered_at,
        dwell=dwell,
        dwell_fired=mark >= start,
        violating=violating,
        violation_rising=rising,
        point_keys=pk[pk_order],
        point_state=state[is_point][pk_order],
        stored_keys=stored_keys,
    )
