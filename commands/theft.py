"""Theft suspicion: a vehicle whose confirmed state is locked and that then moves (pure).

Moving means a reported speed above the park threshold, or a fix further than GPS noise from where
the vehicle stood when it was locked (a bike carried away reports no speed of its own). One
`theft_suspected` per episode: the episode ends when the vehicle has stood still for the park time
again, and its new place becomes the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from commands.lifecycle import parked
from commands.model import Rules, Vehicle

DISPLACEMENT_M = 50.0  # beyond GPS noise between two fixes of a standing vehicle (a few metres, 30 m at worst)
EARTH_RADIUS_M = 6_371_000.0


@dataclass(frozen=True, slots=True)
class Watch:
    anchor: tuple[float, float] | None = None  # (lon, lat) where the locked vehicle stands
    open: bool = False  # an episode has been raised and has not ended


@dataclass(frozen=True, slots=True)
class Suspicion:
    lon: float | None
    lat: float | None
    speed_kmh: float | None
    moved_m: float | None
    reason: str


def watch(previous: Watch, vehicle: Vehicle, now: datetime, rules: Rules) -> tuple[Watch, Suspicion | None]:
    """Fold one report of a vehicle known to be locked; returns the new watch and an event to raise."""
    here = None if vehicle.lon is None or vehicle.lat is None else (vehicle.lon, vehicle.lat)
    moved = None if here is None or previous.anchor is None else distance_m(previous.anchor, here)
    fast = vehicle.speed_kmh is not None and vehicle.speed_kmh > rules.park_speed_kmh
    carried = moved is not None and moved > DISPLACEMENT_M
    if previous.open and not fast and parked(vehicle, now, rules):
        return Watch(here or previous.anchor, False), None  # standing again: the episode is over
    if fast or carried:
        if previous.open:
            return previous, None
        reason = f"moving at {vehicle.speed_kmh:g} km/h" if fast else f"moved {moved:.0f} m"
        suspicion = Suspicion(vehicle.lon, vehicle.lat, vehicle.speed_kmh, moved, reason + " while locked")
        return Watch(previous.anchor, True), suspicion
    if previous.anchor is None:
        return Watch(here, previous.open), None
    return previous, None


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lon, lat) points."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
