"""The simulated city: a lon/lat box, a square street grid laid over it, and routes along its streets.

Vehicles only ever move along grid lines, so trips look like rides through a street network and
their lengths are Manhattan distances, which keeps the trip and utilisation numbers of the core
meaningful (a straight line through houses would shorten every trip). Positions are kept in metres
on a local plane whose origin is the box's south-west corner; an equirectangular projection at the
box's middle latitude turns them into WGS84 and is accurate to centimetres over a city.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRES_PER_DEG_LAT = 110_574.0
METRES_PER_DEG_LON_EQUATOR = 111_320.0

Point = tuple[float, float]


class CityError(ValueError):
    """A city box or grid that cannot hold a street network."""


@dataclass(frozen=True, slots=True)
class City:
    """A box of streets. The default is central Berlin, about 13.6 km east-west by 13.3 km north-south
    with 150 m blocks: flat, dense and big enough for bicycle trips of a few kilometres."""

    lon_min: float = 13.30
    lat_min: float = 52.45
    lon_max: float = 13.50
    lat_max: float = 52.57
    block_m: float = 150.0
    charging_every: int = 10  # one intersection in this many has a charging dock

    def __post_init__(self) -> None:
        values = (self.lon_min, self.lat_min, self.lon_max, self.lat_max, self.block_m)
        if not all(math.isfinite(v) for v in values):
            raise CityError("city box values must be finite numbers")
        if not (-180 <= self.lon_min < self.lon_max <= 180 and -85 <= self.lat_min < self.lat_max <= 85):
            raise CityError(f"bad city box {self.lon_min},{self.lat_min},{self.lon_max},{self.lat_max}")
        if self.block_m < 10 or self.charging_every < 1:
            raise CityError("block_m must be >= 10 and charging_every >= 1")
        if self.columns < 2 or self.rows < 2:
            raise CityError("city box is smaller than two blocks each way")

    @classmethod
    def parse_box(cls, text: str, block_m: float = 150.0) -> City:
        """Read `lon_min,lat_min,lon_max,lat_max` as given on a command line."""
        try:
            lon_min, lat_min, lon_max, lat_max = (float(p) for p in text.split(","))
        except ValueError:
            raise CityError(f"city box must be lon_min,lat_min,lon_max,lat_max, got {text!r}") from None
        return cls(lon_min, lat_min, lon_max, lat_max, block_m)

    @property
    def metres_per_deg_lon(self) -> float:
        return METRES_PER_DEG_LON_EQUATOR * math.cos(math.radians((self.lat_min + self.lat_max) / 2))

    @property
    def width_m(self) -> float:
        return (self.lon_max - self.lon_min) * self.metres_per_deg_lon

    @property
    def height_m(self) -> float:
        return (self.lat_max - self.lat_min) * METRES_PER_DEG_LAT

    @property
    def columns(self) -> int:
        """Number of north-south streets (intersections per row)."""
        return int(self.width_m // self.block_m) + 1

    @property
    def rows(self) -> int:
        return int(self.height_m // self.block_m) + 1

    def to_lonlat(self, x_m: float, y_m: float) -> Point:
        return (self.lon_min + x_m / self.metres_per_deg_lon, self.lat_min + y_m / METRES_PER_DEG_LAT)

    def to_xy(self, lon: float, lat: float) -> Point:
        return ((lon - self.lon_min) * self.metres_per_deg_lon, (lat - self.lat_min) * METRES_PER_DEG_LAT)

    def intersection(self, col: int, row: int) -> Point:
        return (col * self.block_m, row * self.block_m)

    def nearest_intersection(self, x_m: float, y_m: float) -> tuple[int, int]:
        col = min(max(round(x_m / self.block_m), 0), self.columns - 1)
        row = min(max(round(y_m / self.block_m), 0), self.rows - 1)
        return col, row

    def is_charging_spot(self, col: int, row: int) -> bool:
        """A fixed scatter of docks, no random draw: every seed sees the same docks."""
        return (col * 7 + row * 13) % self.charging_every == 0

    def random_spot(self, rng: np.random.Generator) -> tuple[int, int]:
        return int(rng.integers(self.columns)), int(rng.integers(self.rows))

    def destination(self, rng: np.random.Generator, col: int, row: int, max_blocks: int) -> tuple[int, int]:
        """A parking spot a short ride away (at least one block, at most `max_blocks` each way)."""
        while True:
            dc, dr = (int(v) for v in rng.integers(-max_blocks, max_blocks + 1, size=2))
            c = min(max(col + dc, 0), self.columns - 1)
            r = min(max(row + dr, 0), self.rows - 1)
            if (c, r) != (col, row):
                return c, r


def route(city: City, rng: np.random.Generator, start: Point, goal: tuple[int, int]) -> tuple[Point, ...]:
    """Corner points of a street route from `start` (a point on a street) to intersection `goal`.

    Riders take an L or a Z through the grid, chosen at random, so repeated trips between the same
    spots do not all follow one street. The first leg reaches the nearest intersection along the
    street the vehicle stands on.
    """
    c0, r0 = city.nearest_intersection(*start)
    c1, r1 = goal
    points: list[Point] = [start, city.intersection(c0, r0)]
    shape = int(rng.integers(3))
    if shape == 0 or abs(c1 - c0) < 2:  # rows first, then columns
        points.append(city.intersection(c0, r1))
    elif shape == 1 or abs(r1 - r0) < 2:  # columns first, then rows
        points.append(city.intersection(c1, r0))
    else:  # a Z: part of the columns, all rows, the rest of the columns
        mid = c0 + int(rng.integers(1, abs(c1 - c0))) * (1 if c1 > c0 else -1)
        points.extend((city.intersection(mid, r0), city.intersection(mid, r1)))
    points.append(city.intersection(c1, r1))
    deduped = [points[0]]
    for p in points[1:]:
        if p != deduped[-1]:
            deduped.append(p)
    return tuple(deduped)


def heading_deg(a: Point, b: Point) -> float:
    """Compass heading from a to b on the local plane (0 = north, 90 = east)."""
    return math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360.0


def advance(points: tuple[Point, ...], leg: int, pos: Point, distance_m: float) -> tuple[int, Point, float]:
    """Move `distance_m` along the route from `pos` on leg `leg` (heading for points[leg + 1]).

    Returns the new leg, position and the distance actually covered (less than asked at the end).
    """
    covered = 0.0
    while leg < len(points) - 1 and distance_m - covered > 1e-9:
        target = points[leg + 1]
        gap = math.hypot(target[0] - pos[0], target[1] - pos[1])
        step = distance_m - covered
        if step >= gap:
            pos, covered, leg = target, covered + gap, leg + 1
        else:
            f = step / gap
            pos = (pos[0] + (target[0] - pos[0]) * f, pos[1] + (target[1] - pos[1]) * f)
            covered = distance_m
    return leg, pos, covered
