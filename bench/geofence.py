"""Geofence core against shapely 2 on a city-sized workload, in one run.

    .venv/bin/python bench/geofence.py [--points N] [--zones Z] [--seed S] [--repeat R]

Workload: Z star-shaped (mostly concave) zones of 20 to 60 vertices, radii 50 to 600 m (log-uniform),
centres uniform in a 20 km x 20 km box around Berlin; N points uniform in the same box. Shapely's
side is what one would write with it: an STRtree over the zones, one bulk query for candidate pairs,
then `contains_xy` on prepared geometries. Both sides are timed end to end from coordinate arrays to
(point, zone) pairs; figures are medians of R runs. A disagreement is a (point, zone) pair one side
has and the other has not; the boundary rule (see geofence.grid) may differ from shapely's only for
points within 1e-9 degrees of an edge, so disagreements are reported split by that distance.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

# run as a script, this file's folder comes first on sys.path and its name would hide the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]
from geofence.index import ZoneIndex  # noqa: E402

CENTRE = (13.40, 52.52)
HALF_BOX_M = 10_000.0
M_PER_DEG = 111_320.0


def city_zones(rng: np.random.Generator, count: int) -> list[Polygon]:
    kx = M_PER_DEG * math.cos(math.radians(CENTRE[1]))
    zones = []
    for _ in range(count):
        n = int(rng.integers(20, 61))
        radius = math.exp(rng.uniform(math.log(50), math.log(600)))
        cx, cy = rng.uniform(-HALF_BOX_M + radius, HALF_BOX_M - radius, 2)
        angle = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = radius * rng.uniform(0.45, 1.0, n)
        x = CENTRE[0] + (cx + r * np.cos(angle)) / kx
        y = CENTRE[1] + (cy + r * np.sin(angle)) / M_PER_DEG
        zones.append(Polygon(np.column_stack([x, y])))
    return zones


def city_points(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    kx = M_PER_DEG * math.cos(math.radians(CENTRE[1]))
    lon = CENTRE[0] + rng.uniform(-HALF_BOX_M, HALF_BOX_M, count) / kx
    lat = CENTRE[1] + rng.uniform(-HALF_BOX_M, HALF_BOX_M, count) / M_PER_DEG
    return lon, lat


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of `repeat` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Wall times of several contenders run in turns: on a shared machine a burst of load from
    elsewhere then hits all of them alike, not whichever happened to run at that moment."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def shapely_locate(tree: shapely.STRtree, zones: np.ndarray, lon: np.ndarray, lat: np.ndarray):
    candidates = tree.query(shapely.points(lon, lat))
    point, zone = candidates
    inside = shapely.contains_xy(zones[zone], lon[point], lat[point])
    return point[inside], zone[inside]


def small_batches(locate: Callable, lon: np.ndarray, lat: np.ndarray, size: int, count: int) -> Callable:
    """The same points arriving as `count` batches of `size` points (live ingest)."""
    slices = [(lon[i * size : (i + 1) * size], lat[i * size : (i + 1) * size]) for i in range(count)]

    def run() -> None:
        for x, y in slices:
            locate(x, y)

    return run


def disagreements(ours, theirs, zones: list[Polygon], lon, lat, width: int) -> tuple[int, int]:
    a = np.unique(ours[0].astype(np.int64) * width + ours[1])
    b = np.unique(theirs[0].astype(np.int64) * width + theirs[1])
    diff = np.setxor1d(a, b, assume_unique=True)
    near = 0
    for key in diff:
        p, z = divmod(int(key), width)
        near += zones[z].boundary.distance(shapely.Point(lon[p], lat[p])) < 1e-9
    return len(diff) - near, near


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--zones", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1_000, help="live-ingest batch size")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    zones = city_zones(rng, args.zones)
    lon, lat = city_points(rng, args.points)
    geometries = dict(enumerate(zones))
    n = args.points

    build_s, index = timed(lambda: ZoneIndex.build(geometries), 3)
    replaced = {7: city_zones(np.random.default_rng(args.seed + 1), 1)[0]}
    update_s, _ = timed(lambda: index.with_zones(replaced), 3)
    tree_s, tree = timed(lambda: shapely.STRtree(zones), 3)
    prepared = np.array(zones, dtype=object)
    shapely.prepare(prepared)
    ours = index.locate(lon, lat)
    theirs = shapely_locate(tree, prepared, lon, lat)
    away, near = disagreements(ours, theirs, zones, lon, lat, args.zones)
    big = interleaved(
        {
            "ours": lambda: index.locate(lon, lat),
            "shapely": lambda: shapely_locate(tree, prepared, lon, lat),
            "read": lambda: (np.add.reduce(lon), np.add.reduce(lat)),
        },
        args.repeat,
    )
    count = min(200, n // args.batch)
    small = interleaved(
        {
            "ours": small_batches(index.locate, lon, lat, args.batch, count),
            "shapely": small_batches(lambda x, y: shapely_locate(tree, prepared, x, y), lon, lat, args.batch, count),
        },
        args.repeat,
    )
    print(f"workload: {n:,} points, {args.zones:,} zones (20-60 vertices), 20 km box, seed {args.seed}")
    print(f"memberships found: {len(ours[0]):,} (shapely {len(theirs[0]):,})")
    print(f"index build (all zones):       {build_s * 1e3:9.1f} ms   shapely STRtree: {tree_s * 1e3:.1f} ms")
    print(f"index update (replace 1 zone): {update_s * 1e3:9.1f} ms")
    memory = f"{index.nbytes / 1e6:9.1f} MB lookup + {index.zone_nbytes / 1e6:.1f} MB per-zone cells"
    print(f"index memory:                  {memory}")
    report_speed(big, small, n, count * args.batch, args.batch, args.repeat)
    print(f"disagreements with shapely: {away} away from edges, {near} within 1e-9 deg of an edge")


def rates(times: list[float], points: int) -> tuple[float, float]:
    return points / statistics.median(times), points / min(times)


def report_speed(big: dict, small: dict, n: int, small_points: int, batch: int, repeat: int) -> None:
    print(f"M points/s, median | best of {repeat}     ours              shapely           ratio")
    for label, times, points in ((f"{n:,}-point batch", big, n), (f"{batch:,}-point batches", small, small_points)):
        (o, ob), (t, tb) = rates(times["ours"], points), rates(times["shapely"], points)
        print(
            f"  {label:28s} {o / 1e6:6.2f} | {ob / 1e6:6.2f}   {t / 1e6:6.2f} | {tb / 1e6:6.2f}"
            f"   {o / t:5.1f}x | {ob / tb:5.1f}x"
        )
    ours_rate, _ = rates(big["ours"], n)
    bound, _ = rates(big["read"], n)
    print(
        f"memory-bandwidth bound (numpy reads lon+lat): {bound / 1e6:8.1f} M points/s "
        f"({16 * bound / 1e9:.1f} GB/s); ours = {ours_rate / bound:.1%} of it"
    )


if __name__ == "__main__":
    main()
