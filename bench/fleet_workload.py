"""The geofence benchmark's fleet: vehicles riding along the simulated city's streets, and its zones.

Deterministic from (seed, device index), so the publisher processes and the benchmark's check of the
pure core derive the same records without passing them around.

- `city` (a busy city): each vehicle stands parked and locked at an intersection, reporting every
  `PARKED_STEP_S`, then is unlocked for a ride along an L- or Z-shaped street route of up to
  `MAX_BLOCKS` blocks at 12-24 km/h, reporting every `RIDE_STEP_S`, then is locked again. Zones: one
  service area a little smaller than the city (rides near the edge leave it), no-parking squares
  around intersections (some rides end in one: a violation, and a dwell when parked long), slow
  zones along streets (riders above 15 km/h speed in them), no-ride squares over intersections
  (routes pass through them).
- `worst` (every position a transition): each vehicle jumps between the centre of a no-ride zone and
  a point 300 m away at every report, so every position enters or leaves a zone (enter + violation,
  or exit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geofence.zones import Zone, ZoneKind, parse_zone
from simulators.city import City, advance, route

RIDE_STEP_S = 5.0  # a tracker reporting every 5 s while riding
PARKED_STEP_S = 30.0  # and every 30 s while parked
WORST_STEP_S = 2.0
MAX_BLOCKS = 12
SERVICE_MARGIN_M = 400.0
NO_PARKING, SLOW, NO_RIDE = 300, 60, 40  # zones of each kind
SLOW_LIMIT_KMH = 15.0
CITY = City()


@dataclass(frozen=True, slots=True)
class Track:
    """One device's records as columns."""

    time: np.ndarray  # offsets from the plan's base time, seconds
    lon: np.ndarray
    lat: np.ndarray
    speed_kmh: np.ndarray
    locked: np.ndarray  # bool


def _square(cx_m: float, cy_m: float, half_w: float, half_h: float) -> dict[str, object]:
    corners = [(cx_m - half_w, cy_m - half_h), (cx_m + half_w, cy_m - half_h), (cx_m + half_w, cy_m + half_h),
               (cx_m - half_w, cy_m + half_h)]  # fmt: skip
    ring = [list(CITY.to_lonlat(x, y)) for x, y in corners]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def zones(prefix: str, seed: int) -> list[Zone]:
    """The city's zones; ids start with `prefix`. Zones of one kind may overlap each other."""
    rng = np.random.default_rng([seed, 0])
    w, h, b = CITY.width_m, CITY.height_m, CITY.block_m
    out = [parse_zone(_square(w / 2, h / 2, w / 2 - SERVICE_MARGIN_M, h / 2 - SERVICE_MARGIN_M),
                      id=f"{prefix}service", kind=ZoneKind.SERVICE_AREA)]  # fmt: skip

    def spot() -> tuple[float, float]:
        return CITY.intersection(*CITY.random_spot(rng))

    for i in range(NO_PARKING):
        out.append(parse_zone(_square(*spot(), 30.0, 30.0), id=f"{prefix}np{i}", kind=ZoneKind.NO_PARKING))
    for i in range(SLOW):
        x, y = spot()
        along_x = bool(rng.integers(2))  # 4 blocks along one street, 20 m either side of it
        half = (2 * b, 20.0) if along_x else (20.0, 2 * b)
        out.append(parse_zone(_square(x, y, *half), id=f"{prefix}slow{i}", kind=ZoneKind.SLOW,
                              speed_limit_kmh=SLOW_LIMIT_KMH))  # fmt: skip
    for i in range(NO_RIDE):
        out.append(parse_zone(_square(*spot(), 60.0, 60.0), id=f"{prefix}nr{i}", kind=ZoneKind.NO_RIDE))
    return out


def track(workload: str, seed: int, d: int, count: int) -> Track:
    if workload == "worst":
        return _worst(seed, d, count)
    if workload == "city":
        return _city(seed, d, count)
    raise ValueError(f"unknown workload {workload!r}")


def _city(seed: int, d: int, count: int) -> Track:
    rng = np.random.default_rng([seed, 1, d])
    t = float(rng.uniform(0, PARKED_STEP_S))
    pos = CITY.intersection(*CITY.random_spot(rng))
    rows: list[tuple[float, float, float, float, bool]] = []
    while len(rows) < count:
        for _ in range(int(rng.integers(2, 30))):  # parked: 1 to 15 minutes
            rows.append((t, *pos, 0.0, True))
            t += PARKED_STEP_S
        col, row = CITY.nearest_intersection(*pos)
        points = route(CITY, rng, pos, CITY.destination(rng, col, row, MAX_BLOCKS))
        speed = float(rng.uniform(12.0, 24.0))
        leg = 0
        while leg < len(points) - 1 and len(rows) < count:
            leg, pos, _ = advance(points, leg, pos, speed / 3.6 * RIDE_STEP_S)
            t += RIDE_STEP_S
            rows.append((t, *pos, speed, False))
        t += RIDE_STEP_S
    return _columns(rows[:count])


def _worst(seed: int, d: int, count: int) -> Track:
    rng = np.random.default_rng([seed, 2, d])
    centre = _no_ride_centres(seed)[d % NO_RIDE]
    away = (centre[0] + 300.0, centre[1])
    t0 = float(rng.uniform(0, WORST_STEP_S))
    rows = [(t0 + k * WORST_STEP_S, *(centre if k % 2 == 0 else away), 15.0, False) for k in range(count)]
    return _columns(rows)


def _no_ride_centres(seed: int) -> list[tuple[float, float]]:
    """The centres `zones` gives the no-ride zones (the same draws, in the same order)."""
    rng = np.random.default_rng([seed, 0])
    for _ in range(NO_PARKING):
        CITY.random_spot(rng)
    for _ in range(SLOW):
        CITY.random_spot(rng)
        rng.integers(2)
    return [CITY.intersection(*CITY.random_spot(rng)) for _ in range(NO_RIDE)]


def _columns(rows: list[tuple[float, float, float, float, bool]]) -> Track:
    t, x, y, speed, locked = (np.array(c) for c in zip(*rows, strict=True))
    lon, lat = CITY.to_lonlat(x, y)  # type: ignore[arg-type]  # numpy arrays work as well as floats
    return Track(t.astype(np.float64), lon, lat, speed.astype(np.float64), locked.astype(bool))


def record(tr: Track, k: int, t_base: float) -> dict[str, object]:
    """Record `k` of a track as a JSON v1 record (the fields the ingest benchmark sends too)."""
    return {"ts": round(t_base + float(tr.time[k]), 3), "lat": float(tr.lat[k]), "lon": float(tr.lon[k]),
            "alt_m": 34.0, "speed_kmh": float(tr.speed_kmh[k]), "heading_deg": 90.0, "acc_m": 4.0, "fix": 3,
            "sats": 9, "hdop": 0.9, "battery_pct": 80.0, "odometer_m": 1000.0 + k,
            "locked": bool(tr.locked[k])}  # fmt: skip
