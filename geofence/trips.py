"""Trips from positions and lock state, all devices at once.

A point is *active* when the vehicle is unlocked, or, for trackers that do not report a lock, when it
moves faster than `moving_kmh` (reported speed, else the speed implied by the step from the previous
report). A trip is a run of active points of one device with no silence longer than `max_gap_s`;
it ends at the first inactive report that follows (the lock), so a ride lasts from unlock to lock.

Parked GPS jitter is not a trip: jitter has no lock change, its implied speed is low, and a run must
also last `min_duration_s`, cover `min_distance_m` of path and reach `min_radius_m` away from its
start (jitter wanders but stays near its spot, so its path length alone could add up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from geofence.batch import LOCK_UNKNOWN, UNLOCKED, PositionBatch

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)


def haversine_m(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres, elementwise (arrays or scalars, degrees in)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat = p2 - p1
    dlon = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass(frozen=True, slots=True)
class TripParams:
    moving_kmh: float = 5.0
    max_gap_s: float = 300.0
    min_duration_s: float = 60.0
    min_distance_m: float = 100.0
    min_radius_m: float = 50.0


@dataclass(frozen=True, slots=True)
class Trip:
    device_id: str
    start: datetime
    end: datetime
    start_lon: float
    start_lat: float
    end_lon: float
    end_lat: float
    distance_m: float  # along the reported points
    duration_s: float
    points: int
    ongoing: bool = False  # the data ends while the trip is still active


def detect_trips(batch: PositionBatch, params: TripParams | None = None) -> list[Trip]:
    """All trips in the batch (any order in, per device and time order out)."""
    params = params or TripParams()
    order = np.lexsort((batch.time, batch.device))
    dev, t = batch.device[order], batch.time[order]
    lon, lat = batch.lon[order], batch.lat[order]
    n = len(dev)
    if n == 0:
        return []
    same = np.zeros(n, dtype=bool)
    same[1:] = dev[1:] == dev[:-1]
    dt = np.where(same, np.diff(t, prepend=t[0]), np.inf)
    step = np.where(same, haversine_m(np.roll(lon, 1), np.roll(lat, 1), lon, lat), 0.0)
    implied = np.where(same & (dt > 0), step / np.where(dt > 0, dt, 1.0) * 3.6, 0.0)
    speed = np.where(np.isnan(batch.speed_kmh[order]), implied, batch.speed_kmh[order])
    locked = batch.locked[order]
    active = (locked == UNLOCKED) | ((locked == LOCK_UNKNOWN) & (speed > params.moving_kmh))
    joined = same & (dt <= params.max_gap_s)
    begins = np.flatnonzero(active & ~(joined & np.roll(active, 1)))
    nxt_joined = np.append(joined[1:], False)
    ends = np.flatnonzero(active & ~(nxt_joined & np.append(active[1:], False)))
    closed = nxt_joined[ends]  # the next report of the device (inactive) closes the trip
    ongoing = ~closed & ~np.append(same[1:], False)[ends]  # no later report of the device at all
    last = ends + closed
    path = np.cumsum(step)
    distance = path[last] - path[begins]
    duration = t[last] - t[begins]
    radius = _max_reach(lon, lat, begins, last)
    keep = (duration >= params.min_duration_s) & (distance >= params.min_distance_m) & (radius >= params.min_radius_m)
    ids = batch.device_ids
    tl = t.tolist()  # Python numbers once, rather than a numpy scalar per field per trip
    lonl, latl = lon.tolist(), lat.tolist()
    b_, e_ = begins[keep].tolist(), last[keep].tolist()
    return [
        Trip(
            ids[d],
            datetime.fromtimestamp(tl[b], UTC),
            datetime.fromtimestamp(tl[e], UTC),
            lonl[b],
            latl[b],
            lonl[e],
            latl[e],
            dist,
            dur,
            e - b + 1,
            o,
        )
        for d, b, e, dist, dur, o in zip(
            dev[begins[keep]].tolist(),
            b_,
            e_,
            distance[keep].tolist(),
            duration[keep].tolist(),
            ongoing[keep].tolist(),
            strict=True,
        )
    ]


def _max_reach(lon: np.ndarray, lat: np.ndarray, begins: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Farthest distance of each run's points from the run's first point."""
    if len(begins) == 0:
        return np.zeros(0)
    counts = last - begins + 1
    first = np.cumsum(counts) - counts
    idx = np.arange(int(counts.sum())) + np.repeat(begins - first, counts)
    origin = np.repeat(begins, counts)
    reach = haversine_m(lon[origin], lat[origin], lon[idx], lat[idx])
    return np.maximum.reduceat(reach, first)
