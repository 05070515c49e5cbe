"""The zone index: every zone's cells merged into one grid table, queried for a whole batch at once.

Why this shape beats an R-tree plus point-in-polygon: an R-tree answers "which bounding boxes", then
every candidate zone runs a full polygon test. Here a point's cell is an array read away, a cell
wholly inside a zone needs no real test, and a cell on a zone's border tests only the few edges
stored with it (see `geofence.grid`). All of it is numpy over the batch; there is no Python loop over
points or over zones in `locate`.

Two layouts of the same cells, one per batch size. Live ingest hands over about a thousand points at
a time, and there the fixed cost of each numpy call, not the per-point work, takes the time: the
*item* layout gives each cell one contiguous run of items (one per edge to test for each zone whose
border crosses the cell, one on an always-crossed edge for each zone that holds it wholly inside),
so a batch costs about 30 calls with no branch between inside and border cells. On large batches
the per-point work rules, and the *entry* layout (one entry per cell and zone, with its run of
edges) lets wholly-inside entries skip the edge test. Both evaluate the same expression on the same
float64 numbers, so they agree bit for bit.

Cell table: for a city-sized extent one dense table over the zones' cells (plus a guard cell all
round); for wider extents, tiles of 2**tile_bits cells squared behind a tile table (slot 0 is an
empty tile shared by everything outside the zones).

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

_DENSE_CELL_LIMIT = 1 << 24  # one table of up to 16M cells (64 MB) before switching to tiles
_DENSE_TILE_LIMIT = 1 << 24  # the tile table itself: 64 MB, the whole globe at 2**11 cells per degree
_SMALL = 8192  # up to this many points, `locate` takes the path with the fewest numpy calls
_RAMP = np.arange(1 << 16)  # 0, 1, 2, ...: sliced rather than rebuilt on every call
_RAMP.flags.writeable = False

# Edges are stored as rows (ylo, slope, yhi, xlo). Once x = xlo + (lat - ylo) * slope is known they are
# read as two (lat, lon) pairs, (ylo, -inf) and (yhi, x), and compared with the point's (lat, lon) in
# one call: ylo <= lat, -inf <= lon (a constant true), yhi <= lat, x <= lon. The boundary
# rule's crossing is the pattern (1, 1, 0, 0); a leftward ray counts `not (lon < x)`, (1, 1, 0, 1).
# The four booleans of a row are read as one int32 and compared with the item's pattern.
_PATTERN = np.array([[1, 1, 0, 0], [1, 1, 0, 1]], dtype=bool).view(np.int32)[:, 0]
# Edge 0, the one item of every wholly-inside entry: every point that reaches a zone's cell crosses it
# (such a point is finite: see `_cells_of`), since ylo <= lat < yhi and lon < x = inf + (lat + 1e3) * 0.
_ALWAYS_CROSSED = (-1e3, 0.0, 1e3, np.inf)


@dataclass(frozen=True, slots=True)
class _Merged:
    """The merged lookup. Dense mode (`tile_map is None`): one cell table over the zones' extent plus a
    guard cell all round, so a point outside lands, clipped, in an empty guard cell. Tile mode: tiles
    of 2**tile_bits cells squared, found through a tile table, for extents too wide for a dense one.

    Item layout (small batches): every (cell, zone) entry is stored as its own run of items, and a
    cell's entries lie next to each other, so a point's cell gives one contiguous run and `locate`
    expands runs once, not cells then entries. A wholly-inside entry is one item on edge 0, which
    every point crosses: inside is the same test as a border (parity 1). Entry layout (large
    batches): a cell's entries, each with its run of edges, edge count 0 meaning wholly inside."""

    lon0: float  # west edge of the table's column 0 (dense) or of global column 0 (tiles)
    lat0: float
    cols: int  # dense: table width; tiles: tile columns
    rows: int
    tile_map: np.ndarray | None  # int32 tile slot per tile of the extent (+1 trailing 0), tile mode
    cell_run: np.ndarray  # int32 per cell: (end of its run of items) << run_bits | number of items
    run_bits: int
    items: np.ndarray  # (items, 4) int32: edge, zone slot, crossing pattern, 1 on an entry's first item
    cell_start: np.ndarray  # entry layout (large batches): int32 first entry of each cell
    cell_count: np.ndarray  # uint16/int32 number of entries of each cell
    zone: np.ndarray  # int32 zone slot per entry
    ecount: np.ndarray  # int32 edge count per entry: 0 wholly inside, < 0 leftward ray
    eoffset: np.ndarray  # int32 first edge of the entry's run
    edges: np.ndarray  # (edges, 4) float64: ylo, slope, yhi, xlo; edge 0 is crossed by every point
    shift: np.ndarray  # dense, (2, 1): lat0 * sy, lon0 * sx, the table's origin in whole cells
    upper: np.ndarray  # rows - 1, cols - 1: the last (guard) row and column

    @property
    def nbytes(self) -> int:
        arrays = [self.cell_run, self.items, self.edges, self.cell_start, self.cell_count]
        arrays += [self.zone, self.ecount, self.eoffset]
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
        """All (point index, zone slot) memberships, ordered by point index, then zone slot.

        A point with NaN or out-of-range coordinates is in no zone (validating batches is the
        caller's job; here it only must not land in a wrong cell, and it cannot: see `_cells_of`).
        """
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if lon.shape != lat.shape or lon.ndim != 1:
            raise BatchError("lon and lat must be 1-d arrays of equal length")
        if not lon.size or not self._levels:
            return np.empty(0, np.int64), np.empty(0, np.int32)
        if lon.size <= _SMALL:
            # rows (lat, lon, lat, lon), the shape of an edge row in `_crossings`: one gather fetches both
            points = np.stack((lat, lon, lat, lon), axis=1)
            found = [_locate_small(spec, m, lon, lat, points) for spec, m in self._levels]
        else:
            lon, lat = np.ascontiguousarray(lon), np.ascontiguousarray(lat)
            found = [_locate_large(spec, m, lon, lat) for spec, m in self._levels]
        if len(found) == 1:
            return found[0]
        point = np.concatenate([f[0] for f in found])
        zone = np.concatenate([f[1] for f in found])
        order = np.lexsort((zone, point))
        return point[order], zone[order]


def _locate_small(
    spec: GridSpec, m: _Merged, lon: np.ndarray, lat: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One level's memberships on a small batch: each point's run of items, the boundary rule on
    every item, the parity of each entry's items; about 30 numpy calls. (Ufunc methods, array
    methods and positional `out` throughout: numpy's function wrappers cost as much as the work.)"""
    run = m.cell_run.take(_cells_of(spec, m, lon, lat))
    count = np.bitwise_and(run, (1 << m.run_bits) - 1, dtype=np.intp)
    last = np.add.accumulate(count)
    total = int(last[-1])
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    item = ((run >> m.run_bits) - last).repeat(count)
    item += _RAMP[:total] if total <= _RAMP.size else np.arange(total)
    point = (_RAMP[: lon.size] if lon.size <= _RAMP.size else np.arange(lon.size)).repeat(count)
    items = m.items.take(item, 0)
    cross = _crossings(m.edges.take(items[:, 0], 0), points.take(point, 0), items[:, 2])
    first = items[:, 3].nonzero()[0]
    hit = first[np.logical_xor.reduceat(cross, first)]
    return point.take(hit), items[:, 1].take(hit)


def _locate_large(spec: GridSpec, m: _Merged, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One level's memberships on a large batch, through the entry layout: per-point work rules
    there, so wholly-inside entries skip the edge test altogether and only border entries read edges."""
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
        keep[border] = _border_test(m, point.take(border), eoffset, ecount.take(border), lon, lat)
        point, zone = point[keep], zone[keep]
    return point, zone


def _border_test(
    m: _Merged, point: np.ndarray, eoffset: np.ndarray, ecount: np.ndarray, lon: np.ndarray, lat: np.ndarray
) -> np.ndarray:
    """The boundary rule on each (point, zone) pair of a border cell, over that cell's edges only.
    A leftward run counts the edges with `not (px < x)`: same parity as the rightward ray."""
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
    x *= e[:, 1]
    x += e[:, 3]
    cross = px < x
    cross ^= np.repeat(ecount < 0, count)
    cross &= ylo <= py
    cross &= py < e[:, 2]
    return np.logical_xor.reduceat(cross, first)


def _crossings(e: np.ndarray, p: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """`geofence.grid.crossings` on gathered edge rows `e` and point rows `p`: the same operations
    on the same numbers, so the same bits. `e` is a scratch copy: once x is known its rows become
    (ylo, -inf, yhi, x), compared with (lat, lon, lat, lon) in one call, and each item's four
    booleans, adjacent, are read as one int32."""
    x = p[:, 0] - e[:, 0]
    x *= e[:, 1]
    e[:, 3] += x
    e[:, 1] = -np.inf
    return (e <= p).view(np.int32)[:, 0] == pattern


def _cells_of(spec: GridSpec, m: _Merged, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Each point's cell number in the merged table.

    Dense mode clamps (row, col) into the table, which has an empty guard cell on every side; valid
    points lie east/north of the origin, where flooring is exact, so whatever is clamped, NaN
    included (`fmax` drops it), lands in a guard cell and matches no zone. Scaling by a power of two
    first and shifting by a whole number of cells after gives the same bits as shifting first.
    """
    if m.tile_map is None:
        g = np.empty((2, lon.size))
        np.multiply(lat, spec.sy, g[0])
        np.multiply(lon, spec.sx, g[1])
        g -= m.shift
        np.fmax(g, 0.0, g)
        np.fmin(g, m.upper, g)
        row_col = g.astype(np.intp)
        cell = row_col[0] * m.cols
        cell += row_col[1]
        return cell
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
    """Cell coordinate as int32, clamped to [0, upper] (NaN to 0), for the tile layout."""
    out = values - origin
    out *= scale
    np.fmax(out, 0.0, out=out)
    np.fmin(out, upper, out=out)
    return out.astype(np.int32)


def _merge(cells: Mapping[int, ZoneCells], spec: GridSpec) -> _Merged:
    """All zones' cells in one lookup. Run on every change, so it keeps to int32 and few passes."""
    slots = sorted(cells)
    parts = [cells[s] for s in slots]
    sizes = np.fromiter((len(c.row) for c in parts), np.int64, len(parts))
    edge_sizes = np.fromiter((len(c.edges.ylo) for c in parts), np.int64, len(parts))
    if edge_sizes.sum() >= 2**31 - 1:
        raise ZoneError("zones have too many edges for one index")
    edge_base = (np.cumsum(edge_sizes) - edge_sizes + 1).astype(np.int32)  # after edge 0
    edges = np.empty((int(edge_sizes.sum()) + 1, 4), dtype=np.float64)
    edges[0] = _ALWAYS_CROSSED
    for column, name in enumerate(("ylo", "slope", "yhi", "xlo")):
        edges[1:, column] = np.concatenate([getattr(c.edges, name) for c in parts])
    row = np.concatenate([c.row for c in parts])
    col = np.concatenate([c.col for c in parts])
    r0, c0 = int(row.min()) - 1, int(col.min()) - 1
    height, width = int(row.max()) - r0 + 2, int(col.max()) - c0 + 2
    if height * width <= _DENSE_CELL_LIMIT:
        layout = (float(c0) / spec.sx + ORIGIN_LON, float(r0) / spec.sy + ORIGIN_LAT, width, height, None)
        cell = row - r0
        cell *= width
        cell += col - c0
        ncells = height * width
    else:
        layout, cell, ncells = _tiles(row.astype(np.int64), col.astype(np.int64), spec)
    order = np.argsort(cell, kind="stable")
    eoffset = np.concatenate([c.eoffset for c in parts])
    eoffset += np.repeat(edge_base, sizes)
    zone = np.repeat(np.array(slots, dtype=np.int32), sizes)
    ecount = np.concatenate([c.ecount for c in parts])
    cell, zone, ecount, eoffset = cell[order], zone[order], ecount[order], eoffset[order]
    cell_run, run_bits, items = _runs(cell, ncells, zone, ecount, eoffset)
    counts = np.bincount(cell, minlength=ncells)
    cell_start = np.zeros(ncells, dtype=np.int32)
    np.cumsum(counts[:-1], out=cell_start[1:])
    lon0, lat0, cols, rows, tile_map = layout
    return _Merged(
        lon0=lon0,
        lat0=lat0,
        cols=cols,
        rows=rows,
        tile_map=tile_map,
        cell_run=cell_run,
        run_bits=run_bits,
        items=items,
        cell_start=cell_start,
        cell_count=counts.astype(np.uint16 if counts.max() < 2**16 else np.int32),
        zone=zone,
        ecount=ecount,
        eoffset=eoffset,
        edges=edges,
        shift=np.array([[lat0 * spec.sy], [lon0 * spec.sx]]),
        upper=np.array([[rows - 1.0], [cols - 1.0]]),
    )


def _runs(
    cell: np.ndarray, ncells: int, zone: np.ndarray, ecount: np.ndarray, eoffset: np.ndarray
) -> tuple[np.ndarray, int, np.ndarray]:
    """Entries (sorted by cell, then slot) spelled out as items: a wholly-inside entry becomes one
    item on edge 0, a border entry one item per edge of its run. A cell's (end, count) is packed into
    one integer, so a point's lookup is one read."""
    n = np.abs(ecount)
    np.maximum(n, 1, out=n)
    end = np.cumsum(n, dtype=np.int64)
    total = int(end[-1])
    if total >= 2**31:
        raise ZoneError(f"zones need {total} index items; the index holds at most 2**31")
    first = (end - n).astype(np.int32)
    entry = np.empty((len(n), 4), dtype=np.int32)
    np.subtract(np.where(ecount == 0, 0, eoffset), first, out=entry[:, 0])
    entry[:, 1] = zone
    entry[:, 2] = _PATTERN.take((ecount < 0).view(np.int8))
    entry[:, 3] = 0
    items = np.repeat(entry, n, axis=0)
    items[:, 0] += np.arange(total, dtype=np.int32)
    items[first, 3] = 1
    last = np.empty(len(cell), dtype=bool)  # the last entry of each occupied cell
    np.not_equal(cell[1:], cell[:-1], out=last[:-1])
    last[-1] = True
    cell_end = end[last]
    per_cell = np.diff(cell_end, prepend=0)
    bits = max(1, int(per_cell.max()).bit_length())
    cell_end <<= bits
    cell_end |= per_cell
    cell_run = np.zeros(ncells, dtype=np.int32 if total < 2 ** (31 - bits) else np.int64)
    cell_run[cell[last]] = cell_end  # an empty cell reads 0: no items
    return cell_run, bits, items


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
