"""The zone index against the plain boundary rule (bit for bit) and against shapely (off the boundary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

import geofence.index as index_module
from geofence.grid import GridSpec, contains_reference
from geofence.index import ZoneIndex
from geofence.zones import parse_zone

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# few cells per zone: big zones move to coarser levels (exercising those), and examples stay fast
SMALL = GridSpec(max_cells_per_zone=1 << 14)


def star(cx: float, cy: float, radius: float, n: int, rng: np.random.Generator, inner: float = 0.3) -> np.ndarray:
    angle = np.sort(rng.uniform(0, 2 * math.pi, n))
    r = radius * rng.uniform(inner, 1.0, n)
    return np.column_stack([cx + r * np.cos(angle), cy + r * np.sin(angle)])


@st.composite
def zones(draw: st.DrawFn) -> Polygon | MultiPolygon:
    """Random and adversarial zones: concave stars, holes, multipolygons, from 1e-6 to 20 degrees."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    radius = 10 ** draw(st.floats(-6, 1.3))
    cx = draw(st.floats(-179 + radius, 179 - radius)) if radius < 170 else 0.0
    cy = draw(st.floats(-85 + radius, 85 - radius)) if radius < 80 else 0.0
    n = draw(st.integers(3, 60))
    shell = star(cx, cy, radius, n, rng, inner=draw(st.sampled_from([0.3, 0.9, 1.0])))
    if draw(st.booleans()):  # axis-aligned, vertices on a coarse lattice: edges meet grid lines exactly
        shell = np.round(shell / radius * 4) * radius / 4
    shape = Polygon(shell).buffer(0) if not Polygon(shell).is_valid else Polygon(shell)
    if draw(st.booleans()) and isinstance(shape, Polygon) and shape.area > 0:
        hole = star(cx, cy, radius * 0.2, max(3, n // 2), rng, inner=0.8)
        if Polygon(hole).is_valid and shape.contains(Polygon(hole).buffer(radius * 1e-3)):
            shape = Polygon(shape.exterior.coords, [hole])
    if draw(st.booleans()):
        other = Polygon(star(cx + 3 * radius, cy, radius, n, rng))
        if other.is_valid and other.disjoint(shape):
            shape = MultiPolygon([*shapely.get_parts(shape), other])
    return shapely.normalize(shape)


def probe_points(shape: Polygon | MultiPolygon, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random points around the zone plus every vertex, edge midpoints and points on edges."""
    minx, miny, maxx, maxy = shape.bounds
    w, h = maxx - minx, maxy - miny
    x = rng.uniform(minx - 0.1 * w, maxx + 0.1 * w, 3000)
    y = rng.uniform(miny - 0.1 * h, maxy + 0.1 * h, 3000)
    coords = shapely.get_coordinates(shapely.get_rings(shapely.get_parts(shape)))
    t = rng.uniform(0, 1, len(coords) - 1)[:, None]
    on_edges = coords[:-1] + t * (coords[1:] - coords[:-1])
    mids = (coords[:-1] + coords[1:]) / 2
    px = np.concatenate([x, coords[:, 0], on_edges[:, 0], mids[:, 0]])
    py = np.concatenate([y, coords[:, 1], on_edges[:, 1], mids[:, 1]])
    keep = (np.abs(px) <= 180) & (np.abs(py) <= 90)
    return px[keep], py[keep]


def members(index: ZoneIndex, lon: np.ndarray, lat: np.ndarray, slot: int = 0) -> np.ndarray:
    point, zone = index.locate(lon, lat)
    out = np.zeros(len(lon), dtype=bool)
    out[point[zone == slot]] = True
    return out


@SETTINGS
@given(shape=zones().filter(lambda g: g.is_valid and g.area > 0), seed=st.integers(0, 2**32 - 1))
def test_index_equals_the_boundary_rule_bit_for_bit(shape: Polygon | MultiPolygon, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon, lat = probe_points(shape, rng)
    index = ZoneIndex.build({0: shape}, SMALL)
    assert np.array_equal(members(index, lon, lat), contains_reference(shape, lon, lat))


@SETTINGS
@given(shape=zones().filter(lambda g: g.is_valid and g.area > 0), seed=st.integers(0, 2**32 - 1))
def test_index_agrees_with_shapely_away_from_the_boundary(shape: Polygon | MultiPolygon, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon, lat = probe_points(shape, rng)
    ours = members(ZoneIndex.build({0: shape}, SMALL), lon, lat)
    theirs = shapely.contains_xy(shape, lon, lat)
    far = shapely.distance(shape.boundary, shapely.points(lon, lat)) > 1e-9
    assert far.sum() > 1000
    assert np.array_equal(ours[far], theirs[far])


def test_boundary_rule_on_a_square_left_and_bottom_in_right_and_top_out() -> None:
    index = ZoneIndex.build({0: box(10.0, 50.0, 10.5, 50.25)}, SMALL)
    lon = np.array([10.0, 10.25, 10.5, 10.25, 10.0, 10.5, 10.5, 10.0, 10.25])
    lat = np.array([50.1, 50.0, 50.1, 50.25, 50.0, 50.0, 50.25, 50.25, 50.1])
    expected = [True, True, False, False, True, False, False, False, True]
    assert members(index, lon, lat).tolist() == expected


def test_a_point_on_a_shared_border_is_in_exactly_one_of_two_neighbours() -> None:
    rng = np.random.default_rng(3)
    left = Polygon([(0, 0), (1, 0.2), (1.3, 1), (0.9, 1.7), (0, 1.5)])
    right = Polygon([(1, 0.2), (2, 0), (2, 2), (0.9, 1.7), (1.3, 1)])
    index = ZoneIndex.build({0: left, 1: right}, SMALL)
    shared = np.array([(1, 0.2), (1.3, 1), (0.9, 1.7)])
    t = rng.uniform(0, 1, 500)[:, None]
    pts = np.concatenate([shared[0] + t * (shared[1] - shared[0]), shared[1] + t * (shared[2] - shared[1])])
    point, _ = index.locate(pts[:, 0], pts[:, 1])
    counts = np.bincount(point, minlength=len(pts))
    assert set(counts[(pts[:, 1] > 0.2) & (pts[:, 1] < 1.7)].tolist()) == {1}


def city(count: int, seed: int) -> dict[int, Polygon]:
    rng = np.random.default_rng(seed)
    out = {}
    for slot in range(count):
        cx, cy = 13.4 + rng.uniform(-0.1, 0.1), 52.5 + rng.uniform(-0.06, 0.06)
        out[slot] = Polygon(star(cx, cy, 10 ** rng.uniform(-3.5, -2), int(rng.integers(20, 61)), rng))
    return out


def random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 13.4 + rng.uniform(-0.12, 0.12, n), 52.5 + rng.uniform(-0.08, 0.08, n)


def pairs(index: ZoneIndex, lon: np.ndarray, lat: np.ndarray) -> set[tuple[int, int]]:
    point, zone = index.locate(lon, lat)
    assert np.all(np.diff(point) >= 0), "pairs come ordered by point"
    return set(zip(point.tolist(), zone.tolist(), strict=True))


def test_many_zones_match_shapely_strtree_and_contains_xy() -> None:
    geoms = city(200, 1)
    lon, lat = random_points(50_000, 2)
    polys = np.array(list(geoms.values()), dtype=object)
    point, zone = shapely.STRtree(polys).query(shapely.points(lon, lat), predicate="intersects")
    inside = shapely.contains_xy(polys[zone], lon[point], lat[point])
    expected = set(zip(point[inside].tolist(), zone[inside].tolist(), strict=True))
    assert len(expected) > 1000
    assert pairs(ZoneIndex.build(geoms), lon, lat) == expected


def test_incremental_changes_equal_a_fresh_build() -> None:
    geoms = city(60, 4)
    lon, lat = random_points(20_000, 5)
    index = ZoneIndex.build(geoms)
    moved = city(3, 6)
    changed = index.with_zones({5: moved[0], 60: moved[1]}).without_zones([7, 8])
    fresh = {**geoms, 5: moved[0], 60: moved[1]}
    del fresh[7], fresh[8]
    assert changed.slots == frozenset(fresh)
    assert pairs(changed, lon, lat) == pairs(ZoneIndex.build(fresh), lon, lat)
    assert pairs(index, lon, lat) == pairs(ZoneIndex.build(geoms), lon, lat)  # the old index is untouched


def test_tile_layout_gives_the_same_answers_as_the_dense_one(monkeypatch: pytest.MonkeyPatch) -> None:
    geoms = city(40, 7)
    geoms[40] = Polygon(star(-120.0, 40.0, 0.01, 30, np.random.default_rng(1)))  # far away: wide extent
    lon, lat = random_points(20_000, 8)
    lon = np.concatenate([lon, -120.0 + np.random.default_rng(9).uniform(-0.02, 0.02, 2000)])
    lat = np.concatenate([lat, 40.0 + np.random.default_rng(10).uniform(-0.02, 0.02, 2000)])
    dense = pairs(ZoneIndex.build(geoms), lon, lat)
    monkeypatch.setattr(index_module, "_DENSE_CELL_LIMIT", 16)
    tiled = ZoneIndex.build(geoms)
    assert tiled._levels[0][1].tile_map is not None
    assert pairs(tiled, lon, lat) == dense
    assert any(z == 40 for _, z in dense)


def test_a_zone_too_large_for_the_fine_grid_goes_to_a_coarser_level() -> None:
    big = Polygon(star(10.0, 50.0, 3.0, 50, np.random.default_rng(2)))
    small = Polygon(star(10.0, 50.0, 0.001, 20, np.random.default_rng(3)))
    index = ZoneIndex.build({0: big, 1: small}, GridSpec(max_cells_per_zone=100_000))
    assert len(index._levels) == 2
    rng = np.random.default_rng(4)
    lon = np.concatenate([rng.uniform(7, 13, 20_000), rng.uniform(9.998, 10.002, 5000)])
    lat = np.concatenate([rng.uniform(47, 53, 20_000), rng.uniform(49.998, 50.002, 5000)])
    got = pairs(index, lon, lat)
    for slot, shape in ((0, big), (1, small)):
        ref = np.flatnonzero(contains_reference(shape, lon, lat))
        assert {p for p, z in got if z == slot} == set(ref.tolist())


def test_antimeridian_zone_is_found_on_both_sides() -> None:
    ring = [[179.9, 10.0], [-179.8, 10.0], [-179.8, 10.2], [179.9, 10.2], [179.9, 10.0]]
    zone = parse_zone({"type": "Polygon", "coordinates": [ring]}, id="dl", kind="no_ride")
    index = ZoneIndex.build({0: zone.geometry})
    lon = np.array([179.95, -179.95, -179.85, 179.85, -179.75, 180.0, -180.0])
    lat = np.full(len(lon), 10.1)
    got = members(index, lon, lat)
    assert got.tolist() == contains_reference(zone.geometry, lon, lat).tolist()
    assert got[:5].tolist() == shapely.contains_xy(zone.geometry, lon[:5], lat[:5]).tolist()
    assert got[:5].tolist() == [True, True, True, False, False]


def test_invalid_coordinates_are_in_no_zone_and_empty_input_works() -> None:
    index = ZoneIndex.build({0: box(-180, -90, 180, 90)}, SMALL)
    lon = np.array([np.nan, 200.0, -181.0, -180.0000001, np.inf, 10.0])
    lat = np.array([0.0, 0.0, 0.0, 0.0, 0.0, np.nan])
    assert index.locate(lon, lat)[0].size == 0
    assert index.locate(np.array([]), np.array([]))[0].size == 0
    assert ZoneIndex().locate(np.array([1.0]), np.array([1.0]))[0].size == 0


def test_mismatched_arrays_raise() -> None:
    with pytest.raises(ValueError, match="equal length"):
        ZoneIndex().locate(np.zeros(3), np.zeros(2))
