"""One zone rasterised onto the global cell grid: which cells are wholly inside, which need the exact test.

The boundary rule lives here. A point is inside a zone when the half-open crossing-number test says
so: count the zone's edges (all rings, all parts) that satisfy

    ylo <= lat < yhi  and  lon < xlo + (lat - ylo) * slope

(edges oriented upwards, horizontal edges never count) and take the parity. Away from the boundary
that is exactly "inside the polygon". On the boundary it is the rule used for pixel coverage: a point
on a left or bottom edge is inside, on a right or top edge outside, so a point on the border that two
adjacent zones share belongs to exactly one of them and never to none. `contains_reference` is the
plain, all-edges form of the rule; the index computes the same expression on the same numbers, only
fewer of them, so the two agree bit for bit (the unit tests hold them to that).

The grid is global and fixed: 2**lon_bits cells per degree of longitude, 2**lat_bits per degree of
latitude, anchored at (-181, -91), so rasterising one zone never depends on any other zone. A cell is
*boundary* for a zone when an edge comes within `pad_deg` of it; every other cell of the zone's
bounding box is wholly inside or wholly outside, decided once at its centre. For a boundary cell we
keep only the edges that can matter to a point in it: those that reach the cell's row and do not end
left of the cell, so the exact test usually looks at 1 to 4 edges instead of all 20 to 60.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from geofence.errors import ZoneError

FloatArray = np.ndarray
IntArray = np.ndarray


ORIGIN_LON = -181.0
ORIGIN_LAT = -91.0


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Cell size as powers of two per degree, so (lon + 180) * 2**bits is exact scaling."""

    lon_bits: int = 12
    lat_bits: int = 12
    tile_bits: int = 6
    pad_deg: float = 1e-9
    max_cells_per_zone: int = 1 << 21

    def __post_init__(self) -> None:
        if not (-8 <= self.lon_bits <= 16 and -8 <= self.lat_bits <= 16 and 2 <= self.tile_bits <= 8):
            raise ValueError("GridSpec: lon_bits/lat_bits must be in [-8, 16] and tile_bits in [2, 8]")

    def gx(self, lon: FloatArray) -> FloatArray:
        """Longitude in global cell units; the origin sits a degree west of -180 so that every valid
        or slightly invalid coordinate maps to a positive cell and truncation is floor."""
        return (lon - ORIGIN_LON) * self.sx

    def gy(self, lat: FloatArray) -> FloatArray:
        return (lat - ORIGIN_LAT) * self.sy

    def coarser(self, levels: int) -> GridSpec:
        """The same grid with cells 2**levels times larger each way (for zones too big to tile finely)."""
        return GridSpec(
            self.lon_bits - levels, self.lat_bits - levels, self.tile_bits, self.pad_deg, self.max_cells_per_zone
        )

    @property
    def sx(self) -> float:
        return 2.0**self.lon_bits

    @property
    def sy(self) -> float:
        return 2.0**self.lat_bits


@dataclass(frozen=True, slots=True)
class CrossingEdges:
    """Non-horizontal edges oriented upwards: the only form the crossing test ever reads."""

    ylo: FloatArray
    yhi: FloatArray
    xlo: FloatArray
    slope: FloatArray

    def take(self, idx: IntArray) -> CrossingEdges:
        return CrossingEdges(self.ylo[idx], self.yhi[idx], self.xlo[idx], self.slope[idx])


@dataclass(frozen=True, slots=True)
class ZoneCells:
    """A zone's cells in global (row, col); `ecount == 0` means wholly inside, otherwise the exact test
    reads edges[eoffset : eoffset + abs(ecount)], with a leftward ray when `ecount < 0`. Cells wholly
    outside are not listed."""

    row: IntArray
    col: IntArray
    ecount: IntArray
    eoffset: IntArray
    edges: CrossingEdges
    level: int = 0  # rasterised on spec.coarser(level)

    @property
    def nbytes(self) -> int:
        arrays = (self.row, self.col, self.ecount, self.eoffset, *_edge_arrays(self.edges))
        return sum(a.nbytes for a in arrays)


def _edge_arrays(e: CrossingEdges) -> tuple[FloatArray, ...]:
    return (e.ylo, e.yhi, e.xlo, e.slope)


def segments(geometry: shapely.Geometry) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """All ring edges of a (Multi)Polygon as x1, y1, x2, y2 arrays."""
    rings = shapely.get_rings(shapely.get_parts(geometry))
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]
    return coords[:-1, 0][same], coords[:-1, 1][same], coords[1:, 0][same], coords[1:, 1][same]


def crossing_edges(x1: FloatArray, y1: FloatArray, x2: FloatArray, y2: FloatArray) -> CrossingEdges:
    keep = y1 != y2
    x1, y1, x2, y2 = x1[keep], y1[keep], x2[keep], y2[keep]
    up = y1 < y2
    ylo, yhi = np.where(up, y1, y2), np.where(up, y2, y1)
    xlo, xhi = np.where(up, x1, x2), np.where(up, x2, x1)
    return CrossingEdges(ylo, yhi, xlo, (xhi - xlo) / (yhi - ylo))


def crossings(e: CrossingEdges, px: FloatArray, py: FloatArray) -> np.ndarray:
    """The boundary rule, elementwise: does the rightward ray from (px, py) cross edge e?"""
    return (e.ylo <= py) & (py < e.yhi) & (px < e.xlo + (py - e.ylo) * e.slope)


def contains_reference(geometry: shapely.Geometry, lon: FloatArray, lat: FloatArray) -> np.ndarray:
    """Brute-force boundary rule against every edge; the yardstick for the index (tests, bench)."""
    edges = crossing_edges(*segments(geometry))
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    out = np.zeros(lon.shape, dtype=bool)
    step = max(1, 4_000_000 // max(1, len(edges.ylo)))
    for i in range(0, len(lon), step):
        px, py = lon[i : i + step, None], lat[i : i + step, None]
        out[i : i + step] = np.logical_xor.reduce(crossings(edges, px, py), axis=1)
    return out


def _ramp(counts: IntArray) -> IntArray:
    """0..counts[i]-1 for every i, concatenated (the offsets of a ragged expansion)."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def rasterize(geometry: shapely.Geometry, spec: GridSpec, zone_id: str = "?") -> ZoneCells:
    """Classify every cell of the zone's bounding box; the expensive step, done once per zone change.

    A zone whose bounding box holds more than `max_cells_per_zone` cells (a whole-region service
    area) goes to a coarser level of the grid, 4x fewer cells per level: still exact, since border
    cells run the exact test, just with more border points per zone.
    """
    x1, y1, x2, y2 = segments(geometry)
    level = 0
    while _bbox_cells(x1, y1, x2, y2, spec.coarser(level)) > spec.max_cells_per_zone:
        level += 1
        if min(spec.lon_bits, spec.lat_bits) - level < -8:
            raise ZoneError(f"zone {zone_id}: too large to index")
    return _rasterize(x1, y1, x2, y2, spec.coarser(level), level, zone_id)


def _bbox_cells(x1: FloatArray, y1: FloatArray, x2: FloatArray, y2: FloatArray, spec: GridSpec) -> int:
    xs, ys = np.concatenate([x1, x2]), np.concatenate([y1, y2])
    width = np.floor(spec.gx(xs.max())) - np.floor(spec.gx(xs.min())) + 3
    height = np.floor(spec.gy(ys.max())) - np.floor(spec.gy(ys.min())) + 3
    return int(width * height)


def _rasterize(
    x1: FloatArray, y1: FloatArray, x2: FloatArray, y2: FloatArray, spec: GridSpec, level: int, zone_id: str
) -> ZoneCells:
    sx, sy = spec.sx, spec.sy
    padx, pady = spec.pad_deg * sx, spec.pad_deg * sy
    gx1, gy1, gx2, gy2 = spec.gx(x1), spec.gy(y1), spec.gx(x2), spec.gy(y2)
    c0 = int(np.floor(min(gx1.min(), gx2.min()) - padx))
    r0 = int(np.floor(min(gy1.min(), gy2.min()) - pady))
    width = int(np.floor(max(gx1.max(), gx2.max()) + padx)) - c0 + 1
    height = int(np.floor(max(gy1.max(), gy2.max()) + pady)) - r0 + 1
    if width * height > spec.max_cells_per_zone:
        raise ZoneError(
            f"zone {zone_id}: {width}x{height} grid cells exceeds the limit of "
            f"{spec.max_cells_per_zone}; split the zone or use a coarser GridSpec"
        )
    e, row, xmin, xmax = _edge_rows(gx1, gy1, gx2, gy2, padx, pady)
    boundary = _boundary_keys(
        row - r0, np.floor(xmin).astype(np.int64) - c0, np.floor(xmax).astype(np.int64) - c0, width
    )
    inside = _inside_keys(gx1, gy1, gx2, gy2, r0, c0, width)
    inside = inside[~np.isin(inside, boundary, assume_unique=True)]
    cross = crossing_edges(x1, y1, x2, y2)
    rank = np.full(len(x1), -1, dtype=np.int64)
    rank[y1 != y2] = np.arange(len(cross.ylo))
    keep = rank[e] >= 0
    ek = e[keep]
    b_count, b_offset, order = _row_prefixes(
        boundary, width, row[keep] - r0, np.maximum(gx1, gx2)[ek] - c0, np.minimum(gx1, gx2)[ek] - c0, padx
    )
    edges = cross.take(rank[ek][order])
    has_edges = b_count != 0
    keys = np.concatenate([inside, boundary[has_edges]])
    return ZoneCells(
        row=(keys // width + r0).astype(np.int32),
        col=(keys % width + c0).astype(np.int32),
        ecount=np.concatenate([np.zeros(len(inside), np.int32), b_count[has_edges].astype(np.int32)]),
        eoffset=np.concatenate([np.zeros(len(inside), np.int32), b_offset[has_edges].astype(np.int32)]),
        edges=edges,
        level=level,
    )


def _edge_rows(
    gx1: FloatArray, gy1: FloatArray, gx2: FloatArray, gy2: FloatArray, padx: float, pady: float
) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
    """Every (edge, row) pair whose padded strip the edge reaches, with the edge's x extent there."""
    ymin, ymax = np.minimum(gy1, gy2), np.maximum(gy1, gy2)
    first = np.floor(ymin - pady).astype(np.int64)
    nrows = np.floor(ymax + pady).astype(np.int64) - first + 1
    e = np.repeat(np.arange(len(gx1)), nrows)
    row = first[e] + _ramp(nrows)
    lo = np.maximum(row - pady, ymin[e])
    hi = np.minimum(row + 1 + pady, ymax[e])
    dy = gy2[e] - gy1[e]
    flat = dy == 0
    slope = np.where(flat, 0.0, (gx2[e] - gx1[e]) / np.where(flat, 1.0, dy))
    xa = np.where(flat, gx1[e], gx1[e] + (lo - gy1[e]) * slope)
    xb = np.where(flat, gx2[e], gx1[e] + (hi - gy1[e]) * slope)
    return e, row, np.minimum(xa, xb) - padx, np.maximum(xa, xb) + padx


def _boundary_keys(row: IntArray, cmin: IntArray, cmax: IntArray, width: int) -> IntArray:
    n = np.maximum(cmax - cmin + 1, 0)
    cells = np.repeat(row * width + cmin, n) + _ramp(n)
    return np.unique(cells)


def _inside_keys(
    gx1: FloatArray, gy1: FloatArray, gx2: FloatArray, gy2: FloatArray, r0: int, c0: int, width: int
) -> IntArray:
    """Cells whose centre is inside, by scanlines through the row centres (pairs of crossings)."""
    e = crossing_edges(gx1, gy1, gx2, gy2)
    first = np.ceil(e.ylo - 0.5).astype(np.int64)
    n = np.maximum(np.ceil(e.yhi - 0.5).astype(np.int64) - first, 0)
    idx = np.repeat(np.arange(len(e.ylo)), n)
    row = first[idx] + _ramp(n)
    xi = e.xlo[idx] + (row + 0.5 - e.ylo[idx]) * e.slope[idx]
    order = np.lexsort((xi, row))
    row, xi = row[order], xi[order]
    start, stop = row[0::2], row[1::2]
    if not np.array_equal(start, stop):
        raise ZoneError("zone rings do not close on every scanline (invalid geometry)")
    a = np.ceil(xi[0::2] - 0.5).astype(np.int64)
    b = np.floor(xi[1::2] - 0.5).astype(np.int64)
    return _boundary_keys(start - r0, a - c0, b - c0, width)


def _row_prefixes(
    boundary: IntArray, width: int, row: IntArray, xmax: FloatArray, xmin: FloatArray, padx: float
) -> tuple[IntArray, IntArray, IntArray]:
    """For each boundary cell, the shorter of its two runs of row edges: those that end at or right
    of the cell (a rightward ray) or those that start at or left of it (a leftward ray).

    Both rays give the same parity, bit for bit: the edges whose y-range holds the point's latitude
    number an even count on every ring, and `px < x` is false for exactly the edges the rightward
    ray skips. Edges are stored twice, once sorted per row by right end descending, once by left end
    ascending, so either run is one offset and one count; a negative count means "leftward".
    """
    n = len(row)
    stride = width + 5.0
    rkeys = row * stride + (width + 2.0 - xmax)
    lkeys = row * stride + (xmin + 2.0)
    rorder = np.argsort(rkeys, kind="stable")
    lorder = np.argsort(lkeys, kind="stable")
    rkeys, lkeys = rkeys[rorder], lkeys[lorder]
    b_row, b_col = boundary // width, boundary % width
    rstart = np.searchsorted(rkeys, b_row * stride, side="left")
    rcount = np.searchsorted(rkeys, b_row * stride + (width + 2.0 - (b_col - 2 * padx)), side="right") - rstart
    lstart = np.searchsorted(lkeys, b_row * stride, side="left")
    lcount = np.searchsorted(lkeys, b_row * stride + (b_col + 1 + 2 * padx + 2.0), side="right") - lstart
    left = lcount < rcount
    count = np.where(left, -lcount, rcount)
    offset = np.where(left, lstart + n, rstart)
    return count, offset, np.concatenate([rorder, lorder])
