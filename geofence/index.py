"""The zone index: every zone's cells merged into one two-level grid, queried for a whole batch at once.

Why this shape beats an R-tree plus point-in-polygon: an R-tree answers "which bounding boxes", then
every candidate zone runs a full polygon test. Here a point's cell is two array reads away (tile
table, then the cell's run of entries), a cell wholly inside a zone needs no test at all, and a cell on
a zone's border tests only the few edges stored with it (see `geofence.grid`). All of it is numpy
over the batch; there is no Python loop over points or over zones in `locate`.

Layout: for a city-sized extent one dense table over the zones' cells (plus a guard cell all round)
gives each point's run of entries in two array reads; for wider extents, tiles of 2**tile_bits cells
squared behind a tile table (slot 0 is an empty tile shared by everything outside the zones). Each
entry is (zone slot, edge count, edge offset), with edge count 0 meaning "wholly inside".

The index is immutable: `with_zones` / `without_zones` rasterise only the zones that changed and
reuse every other zone's cells, then re-merge (a sort over all entries, tens of milliseconds for a
city). A running worker builds the new index beside the old and swaps one reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import shapely

from geofence.errors import BatchError, ZoneError
from geofence.grid import ORIGIN_LAT, ORIGIN_LON, GridSpec, ZoneCells, rasterize

_DENSE_CELL_LIMIT = 1 << 24  # one table of up to 16M cells (96 MB) before switching to tiles
_DENSE_TILE_LIMIT = 1 << 24  # the tile table itself: 64 MB, the whole globe at 2**11 cells per degree


@dataclass(frozen=True, slots=True)
class _Merged:
    """The merged lookup. Dense mode (`tile_map is None`): one cell table over the zones' extent plus a
    guard cell all round, so a point outside lands, clipped, in an empty guard cell. Tile mode: tiles
    of 2**tile_bits cells squared, found through a tile table, for extents too wide for a dense one."""

    lon0: float  # west edge of the table's column 0 (dense) or of global column 0 (tiles)
    lat0: float
    cols: int  # dense: table width; tiles: tile columns
    rows: int
    tile_map: np.ndarray | None  # int32 tile slot per tile of the extent (+1 trailing 0), tile mode
    cell_start: np.ndarray  # int32 first entry of each cell
    cell_count: np.ndarray  # uint16/int32 number of entries of each cell
    zone: np.ndarray  # int32 zone slot per entry
    ecount: np.ndarray  # int32 edge count per entry: 0 wholly inside, < 0 leftward ray
    eoffset: np.ndarray  # int32/int64 offset into edges
    edges: np.ndarray  # (n, 4) float64: ylo, yhi, xlo, slope

    @property
    def nbytes(self) -> int:
        arrays = [self.cell_start, self.cell_count, self.zone, self.ecount, self.eoffset, self.edges]
        if self.tile_map is not None:
            arrays.append(self.tile_map)
        return sum(a.nbytes for a in arrays)


class ZoneIndex:
    """An immutable set of zone geometries, keyed by small integer slots, that locates points.

    Zones normally share one grid level; a zone too large for it sits on a coarser level (see
    `geofence.grid.rasterize`) and `locate` then queries each level present.
    """

    __slots__ = ("_cells", "_levels", "_spec")

    def __init__(self, spec: GridSpec | None = None, cells: Mapping[int, ZoneCells] | None = None) -> None:
        self._spec = spec or GridSpec()
        self._cells: dict[int, ZoneCells] = dict(cells or {})
        levels = sorted({c.level for c in self._cells.values()})
        self._levels = tuple(
            (
                self._spec.coarser(k),
                _merge({s: c for s, c in self._cells.items() if c.level == k}, self._spec.coarser(k)),
            )
            for k in levels
        )

    @classmethod
    def build(cls, geometries: Mapping[int, shapely.Geometry], spec: GridSpec | None = None) -> ZoneIndex:
        spec = spec or GridSpec()
        return cls(spec, {slot: rasterize(g, spec, str(slot)) for slot, g in geometries.items()})

    def with_zones(self, geometries: Mapping[int, shapely.Geometry]) -> ZoneIndex:
        """A new index with these slots added or replaced; other zones are not rasterised again."""
        cells = dict(self._cells)
        cells.update({slot: rasterize(g, self._spec, str(slot)) for slot, g in geometries.items()})
        return ZoneIndex(self._spec, cells)

    def without_zones(self, slots: set[int] | list[int]) -> ZoneIndex:
        gone = set(slots)
        return ZoneIndex(self._spec, {s: c for s, c in self._cells.items() if s not in gone})

    @property
    def spec(self) -> GridSpec:
        return self._spec

    @property
    def slots(self) -> frozenset[int]:
        return frozenset(self._cells)

    @property
    def nbytes(self) -> int:
        """Memory held by the merged lookup arrays (the per-zone cells are kept besides, for updates)."""
        return sum(m.nbytes for _, m in self._levels)

    @property
    def zone_nbytes(self) -> int:
        return sum(c.nbytes for c in self._cells.values())

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (point index, zone slot) memberships, ordered by point index.

        A point with NaN or out-of-range coordinates is in no zone (validating batches is the
        caller's job; here it only must not land in a wrong cell, and it cannot: see `_scaled`).
        """
        lon = np.ascontiguousarray(lon, dtype=np.float64)
        lat = np.ascontiguousarray(lat, dtype=np.float64)
        if lon.shape != lat.shape or lon.ndim != 1:
            raise BatchError("lon and lat must be 1-d arrays of equal length")
        found = [self._locate(spec, m, lon, lat) for spec, m in self._levels] if lon.size else []
        if not found:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        if len(found) == 1:
            return found[0]
        point = np.concatenate([f[0] for f in found])
        zone = np.concatenate([f[1] for f in found])
        order = np.lexsort((zone, point))
        return point[order], zone[order]

    def _locate(self, spec: GridSpec, m: _Merged, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cell = _cells_of(spec, m, lon, lat)
        start = m.cell_start.take(cell)
        count = m.cell_count.take(cell)
        hit = count.nonzero()[0]
        if hit.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        count = count[hit]
        first = np.cumsum(count, dtype=np.int64)
        total = int(first[-1])
        first -= count
        entry = np.repeat(start[hit] - first, count)
        entry += np.arange(total, dtype=np.int64)
        point = np.repeat(hit, count)
        zone = m.zone.take(entry)
        ecount = m.ecount.take(entry)
        border = ecount.nonzero()[0]
        if border.size:
            keep = np.ones(total, dtype=bool)
            eoffset = m.eoffset.take(entry.take(border))
            keep[border] = self._exact(m, point.take(border), eoffset, ecount.take(border), lon, lat)
            point, zone = point[keep], zone[keep]
        return point, zone

    @staticmethod
    def _exact(
        m: _Merged, point: np.ndarray, eoffset: np.ndarray, ecount: np.ndarray, lon: np.ndarray, lat: np.ndarray
    ) -> np.ndarray:
        """The boundary rule on each (point, zone) pair of a border cell, over that cell's edges only.

        A leftward run counts the edges with `not (px < x)`: same parity as the rightward ray.
        """
        count = np.abs(ecount)
        first = np.cumsum(count, dtype=np.int64)
        total = int(first[-1])
        first -= count
        edge = np.repeat(eoffset - first, count)
        edge += np.arange(total, dtype=np.int64)
        e = m.edges[edge]
        p = np.repeat(point, count)
        px, py = lon.take(p), lat.take(p)
        ylo = e[:, 0]
        x = py - ylo
        x *= e[:, 3]
        x += e[:, 2]
        cross = px < x
        cross ^= np.repeat(ecount < 0, count)
        cross &= ylo <= py
        cross &= py < e[:, 1]
        return np.logical_xor.reduceat(cross, first)


def _cells_of(spec: GridSpec, m: _Merged, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Each point's cell number in the merged table."""
    if m.tile_map is None:
        gy = _scaled(lat, m.lat0, spec.sy, m.rows - 1)
        gy *= m.cols
        gy += _scaled(lon, m.lon0, spec.sx, m.cols - 1)
        return gy
    gx = _scaled(lon, m.lon0, spec.sx, 2**30)
    gy = _scaled(lat, m.lat0, spec.sy, 2**30)
    bits = spec.tile_bits
    tx, ty = gx >> bits, gy >> bits
    key = ty.astype(np.int64) * m.cols + tx
    key[(tx >= m.cols) | (ty >= m.rows)] = m.rows * m.cols  # the trailing empty tile
    tile = m.tile_map.take(key).astype(np.int64)
    mask = (1 << bits) - 1
    return (tile << (2 * bits)) | ((gy & mask) << bits) | (gx & mask)


def _scaled(values: np.ndarray, origin: float, scale: float, upper: float) -> np.ndarray:
    """Cell coordinate as int32, clamped to [0, upper]. The table has an empty guard cell on every
    side and valid points lie east/north of the origin (where truncation is floor), so whatever is
    clamped, NaN included (`fmax` drops it), lands in a guard cell and matches no zone."""
    out = values - origin
    out *= scale
    np.fmax(out, 0.0, out=out)
    np.fmin(out, upper, out=out)
    return out.astype(np.int32)


def _merge(cells: Mapping[int, ZoneCells], spec: GridSpec) -> _Merged:
    slots = sorted(cells)
    parts = [cells[s] for s in slots]
    sizes = np.array([len(c.row) for c in parts], dtype=np.int64)
    edge_sizes = np.array([len(c.edges.ylo) for c in parts], dtype=np.int64)
    edge_base = np.cumsum(edge_sizes) - edge_sizes
    row = np.concatenate([c.row for c in parts]).astype(np.int64)
    col = np.concatenate([c.col for c in parts]).astype(np.int64)
    off_dtype = np.int32 if edge_sizes.sum() < 2**31 else np.int64
    eoffset = (np.concatenate([c.eoffset for c in parts]) + np.repeat(edge_base, sizes)).astype(off_dtype)
    edges = np.empty((int(edge_sizes.sum()), 4), dtype=np.float64)
    for column, name in enumerate(("ylo", "yhi", "xlo", "slope")):
        edges[:, column] = np.concatenate([getattr(c.edges, name) for c in parts])
    r0, c0 = int(row.min()) - 1, int(col.min()) - 1
    height, width = int(row.max()) - r0 + 2, int(col.max()) - c0 + 2
    if height * width <= _DENSE_CELL_LIMIT:
        layout = (float(c0) / spec.sx + ORIGIN_LON, float(r0) / spec.sy + ORIGIN_LAT, width, height, None)
        cell = (row - r0) * width + (col - c0)
        ncells = height * width
    else:
        layout, cell, ncells = _tiles(row, col, spec)
    order = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=ncells)
    cell_start = np.zeros(ncells, dtype=np.int32 if len(cell) < 2**31 else np.int64)
    np.cumsum(counts[:-1], out=cell_start[1:])
    lon0, lat0, cols, rows, tile_map = layout
    return _Merged(
        lon0=lon0,
        lat0=lat0,
        cols=cols,
        rows=rows,
        tile_map=tile_map,
        cell_start=cell_start,
        cell_count=counts.astype(np.uint16 if counts.max() < 2**16 else np.int32),
        zone=np.repeat(np.array(slots, dtype=np.int32), sizes)[order],
        ecount=np.concatenate([c.ecount for c in parts])[order],
        eoffset=eoffset[order],
        edges=edges,
    )


def _tiles(row: np.ndarray, col: np.ndarray, spec: GridSpec) -> tuple[tuple, np.ndarray, int]:
    """Tile layout: number the occupied tiles 1..n (0 is the empty tile everything else maps to)."""
    bits = spec.tile_bits
    trow, tcol = row >> bits, col >> bits
    tr0, tc0 = int(trow.min()) - 1, int(tcol.min()) - 1  # a guard tile west and south, as dense mode
    th, tw = int(trow.max()) - tr0 + 1, int(tcol.max()) - tc0 + 1
    if th * tw > _DENSE_TILE_LIMIT:
        raise ZoneError(f"zones span {th}x{tw} tiles; the index covers at most {_DENSE_TILE_LIMIT} tiles")
    tkey = (trow - tr0) * tw + (tcol - tc0)
    used = np.flatnonzero(np.bincount(tkey, minlength=th * tw))
    tile_map = np.zeros(th * tw + 1, dtype=np.int32)
    tile_map[used] = np.arange(1, len(used) + 1, dtype=np.int32)
    mask = (1 << bits) - 1
    cell = (tile_map[tkey].astype(np.int64) << (2 * bits)) | ((row & mask) << bits) | (col & mask)
    lon0 = float(tc0 << bits) / spec.sx + ORIGIN_LON
    lat0 = float(tr0 << bits) / spec.sy + ORIGIN_LAT
    return (lon0, lat0, tw, th, tile_map), cell, (len(used) + 1) << (2 * bits)
