"""The live set of zones: ids to index slots, the exact index, the hysteresis index, per-slot rules.

Hysteresis is geometric: a device enters a zone when a point is inside the zone itself, and leaves it
only when a point is outside the zone grown by `hysteresis_m` metres. GPS jitter of less than that
around a border therefore produces one `enter` and no storm of exits and re-entries, and it costs no
delay (a rule of "N points in a row" would hold every event back by N reports). The grown zones are
just a second `ZoneIndex` over the same slots.

Immutable like `ZoneIndex`: a change returns a new `ZoneSet` that shares every untouched zone's cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import shapely
from shapely.geometry import box

from geofence.grid import GridSpec
from geofence.index import ZoneIndex
from geofence.zones import Zone, ZoneKind

_M_PER_DEG = 111_320.0
KIND_CODES = {kind: code for code, kind in enumerate(ZoneKind)}


def grown(geometry: shapely.Geometry, metres: float) -> shapely.Geometry:
    """The zone grown by `metres`, buffered in a local metric projection (equirectangular about the
    zone's centre), so the margin is metres on the ground and not degrees that shrink with latitude."""
    if metres <= 0:
        return geometry
    centre = geometry.centroid
    kx = _M_PER_DEG * max(math.cos(math.radians(centre.y)), 1e-6)
    scale = np.array([kx, _M_PER_DEG])
    shift = np.array([centre.x, centre.y])
    local = shapely.transform(geometry, lambda xy: (xy - shift) * scale)
    out = shapely.transform(shapely.buffer(local, metres, quad_segs=4), lambda xy: xy / scale + shift)
    return shapely.intersection(out, box(-180, -90, 180, 90))


class ZoneSet:
    """Zones by id, plus everything derived from them that the transition step reads."""

    __slots__ = ("_by_slot", "_slot_of", "hysteresis_m", "inner", "kind", "outer", "speed_limit", "tree")

    def __init__(
        self,
        zones: Iterable[Zone] = (),
        *,
        hysteresis_m: float = 10.0,
        spec: GridSpec | None = None,
        _previous: ZoneSet | None = None,
        _removed: Iterable[str] = (),
    ) -> None:
        zones = list(zones)
        base = _previous
        by_slot = dict(base._by_slot) if base else {}
        slot_of = dict(base._slot_of) if base else {}
        freed = [slot_of.pop(zid) for zid in _removed if zid in slot_of]
        for slot in freed:
            del by_slot[slot]
        changed: dict[int, Zone] = {}
        hint = 0
        for zone in zones:
            slot = slot_of.get(zone.id)
            if slot is None:
                slot = hint = _free_slot(by_slot, hint)
                slot_of[zone.id] = slot
            by_slot[slot] = changed[slot] = zone
        self._by_slot, self._slot_of = by_slot, slot_of
        self.hysteresis_m = base.hysteresis_m if base else float(hysteresis_m)
        inner = {s: z.geometry for s, z in changed.items()}
        outer = {s: grown(z.geometry, self.hysteresis_m) for s, z in changed.items()} if self.hysteresis_m > 0 else {}
        if base:
            self.inner = base.inner.without_zones(freed).with_zones(inner)
        else:
            self.inner = ZoneIndex.build(inner, spec)
        if self.hysteresis_m <= 0:
            self.outer = self.inner
        elif base:
            self.outer = base.outer.without_zones(freed).with_zones(outer)
        else:
            self.outer = ZoneIndex.build(outer, self.inner.spec)
        size = max(by_slot, default=-1) + 1
        self.kind = np.full(size, -1, dtype=np.int8)
        self.speed_limit = np.full(size, np.inf)
        for slot, zone in by_slot.items():
            self.kind[slot] = KIND_CODES[zone.kind]
            if zone.speed_limit_kmh is not None:
                self.speed_limit[slot] = zone.speed_limit_kmh
        geometries = [by_slot[s].geometry if s in by_slot else shapely.Polygon() for s in range(size)]
        self.tree = shapely.STRtree(geometries)

    def with_zones(self, zones: Iterable[Zone]) -> ZoneSet:
        """Add or replace zones (by id); only these are rasterised."""
        return ZoneSet(zones, _previous=self)

    def without_zones(self, zone_ids: Iterable[str]) -> ZoneSet:
        return ZoneSet((), _previous=self, _removed=list(zone_ids))

    def __len__(self) -> int:
        return len(self._by_slot)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._slot_of

    @property
    def size(self) -> int:
        """One more than the highest slot: the width of per-slot arrays."""
        return len(self.kind)

    def zone(self, slot: int) -> Zone:
        return self._by_slot[slot]

    def slot(self, zone_id: str) -> int | None:
        return self._slot_of.get(zone_id)

    def zones(self) -> list[Zone]:
        return [self._by_slot[s] for s in sorted(self._by_slot)]

    def segment_hits(
        self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, zone slot) for every straight segment that touches a zone; one STRtree
        query for all segments of a batch, in C."""
        if len(x0) == 0 or not self._by_slot:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        coords = np.stack([np.column_stack([x0, y0]), np.column_stack([x1, y1])], axis=1)
        lines = shapely.linestrings(coords)
        seg, slot = self.tree.query(lines, predicate="intersects")
        return seg.astype(np.int64), slot.astype(np.int64)


def _free_slot(by_slot: dict[int, Zone], start: int = 0) -> int:
    """Lowest unused slot from `start`, so slots (and per-slot arrays) stay dense as zones come and go."""
    slot = start
    while slot in by_slot:
        slot += 1
    return slot
