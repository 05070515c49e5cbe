"""Zones: GeoJSON in, validated and normalised shapely geometry out.

Everything the index and the transition logic rely on is settled here, once: the geometry is a valid,
non-empty (Multi)Polygon in lon/lat degrees inside [-180, 180] x [-90, 90], with RFC 7946
orientation (shells counter-clockwise, holes clockwise). A zone that crosses the antimeridian is
stored split into two parts at +-180, the way RFC 7946 asks for, so no later stage has to know
about wrap-around.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box, mapping

from geofence.errors import ZoneError

Polygonal = Polygon | MultiPolygon
MAX_VERTICES = 10_000  # per zone: bounds the work one API call (and every index rebuild) can cause


class ZoneKind(StrEnum):
    """What a zone means for a vehicle; each kind has its own event or violation rule."""

    SERVICE_AREA = "service_area"  # riding allowed; leaving it is a violation
    NO_PARKING = "no_parking"  # locked inside is a violation
    SLOW = "slow"  # speed above `speed_limit_kmh` inside is a violation
    NO_RIDE = "no_ride"  # entering (or riding through) is a violation


@dataclass(frozen=True, slots=True)
class Zone:
    """One geofence. Construct through `parse_zone` unless the geometry is already trusted."""

    id: str
    kind: ZoneKind
    geometry: Polygonal
    speed_limit_kmh: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise ZoneError("zone id must be a non-empty string")
        if not isinstance(self.kind, ZoneKind):
            raise ZoneError(f"zone {self.id}: kind must be a ZoneKind, got {self.kind!r}")
        if not isinstance(self.geometry, Polygon | MultiPolygon) or self.geometry.is_empty:
            raise ZoneError(f"zone {self.id}: geometry must be a non-empty Polygon or MultiPolygon")
        if not self.geometry.is_valid:
            raise ZoneError(f"zone {self.id}: invalid geometry: {shapely.is_valid_reason(self.geometry)}")
        limit = self.speed_limit_kmh
        if self.kind is ZoneKind.SLOW and limit is None:
            raise ZoneError(f"zone {self.id}: a slow zone needs speed_limit_kmh")
        if limit is not None and not (math.isfinite(limit) and 0 < limit < 500):
            raise ZoneError(f"zone {self.id}: speed_limit_kmh must be in (0, 500), got {limit!r}")


def parse_zone(
    feature_or_geometry: Mapping[str, Any],
    *,
    id: str,
    kind: ZoneKind | str,
    speed_limit_kmh: float | None = None,
    name: str = "",
    repair: bool = False,
) -> Zone:
    """Build a `Zone` from a GeoJSON Feature or geometry object, or raise `ZoneError`.

    `repair=True` runs shapely's `make_valid` on an invalid polygon and keeps its polygonal part;
    off by default because a silently "repaired" bow-tie rarely is the zone the operator meant.
    """
    try:
        zone_kind = ZoneKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in ZoneKind)
        raise ZoneError(f"zone {id}: unknown kind {kind!r} (allowed: {allowed})") from None
    geometry = _geometry_object(feature_or_geometry, id)
    polygons = _polygon_coordinates(geometry, id)
    shape = _build(polygons, id)
    if not shape.is_valid:
        if not repair:
            raise ZoneError(f"zone {id}: invalid geometry: {_explain_invalid(shape)}")
        shape = _polygonal_part(shapely.make_valid(shape), id)
    shape = shapely.orient_polygons(shapely.normalize(shape), exterior_cw=False)
    if shape.area <= 0:
        raise ZoneError(f"zone {id}: geometry has zero area")
    return Zone(id=id, kind=zone_kind, geometry=shape, speed_limit_kmh=speed_limit_kmh, name=name)


def zone_to_feature(zone: Zone) -> dict[str, Any]:
    """The zone as a GeoJSON Feature (what the API returns and what `parse_zone` accepts back)."""
    return {
        "type": "Feature",
        "id": zone.id,
        "geometry": mapping(zone.geometry),
        "properties": {"kind": zone.kind.value, "name": zone.name, "speed_limit_kmh": zone.speed_limit_kmh},
    }


def _geometry_object(obj: Mapping[str, Any], zone_id: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ZoneError(f"zone {zone_id}: expected a GeoJSON object, got {type(obj).__name__}")
    if obj.get("type") == "Feature":
        obj = obj.get("geometry")  # type: ignore[assignment]
        if not isinstance(obj, Mapping):
            raise ZoneError(f"zone {zone_id}: Feature has no geometry object")
    kind = obj.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        raise ZoneError(f"zone {zone_id}: geometry type must be Polygon or MultiPolygon, got {kind!r}")
    return obj


def _polygon_coordinates(geometry: Mapping[str, Any], zone_id: str) -> list[list[np.ndarray]]:
    """Check the coordinate nesting and values; return polygons as lists of (n, 2) ring arrays."""
    coords = geometry.get("coordinates")
    parts = [coords] if geometry["type"] == "Polygon" else coords
    if not isinstance(parts, list | tuple) or not parts:
        raise ZoneError(f"zone {zone_id}: coordinates must be a non-empty array")
    polygons = []
    vertices = 0
    for p, rings in enumerate(parts):
        if not isinstance(rings, list | tuple) or not rings:
            raise ZoneError(f"zone {zone_id}: polygon {p} has no rings")
        vertices += sum(len(ring) if isinstance(ring, list | tuple) else 0 for ring in rings)
        if vertices > MAX_VERTICES:
            raise ZoneError(f"zone {zone_id}: more than {MAX_VERTICES} vertices (simplify the zone or split it)")
        polygons.append([_ring(ring, zone_id, f"polygon {p} ring {r}") for r, ring in enumerate(rings)])
    return polygons


def _ring(ring: Any, zone_id: str, where: str) -> np.ndarray:
    try:
        arr = np.array([pos[:2] for pos in ring], dtype=np.float64)
    except (TypeError, ValueError, IndexError):
        raise ZoneError(f"zone {zone_id}: {where}: positions must be [lon, lat] number pairs") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 4:
        raise ZoneError(f"zone {zone_id}: {where}: a ring needs at least 4 [lon, lat] positions")
    if not np.isfinite(arr).all():
        raise ZoneError(f"zone {zone_id}: {where}: coordinates must be finite numbers")
    bad = np.flatnonzero((np.abs(arr[:, 0]) > 180) | (np.abs(arr[:, 1]) > 90))
    if bad.size:
        lon, lat = arr[bad[0]]
        raise ZoneError(f"zone {zone_id}: {where}: position {bad[0]} ({lon}, {lat}) is outside lon/lat range")
    if not np.array_equal(arr[0], arr[-1]):
        raise ZoneError(f"zone {zone_id}: {where}: ring is not closed (first and last position differ)")
    return arr


def _crosses_antimeridian(ring: np.ndarray) -> bool:
    """An edge spanning more than 180 degrees of longitude is taken as the short way across +-180,
    unless both its ends lie on that meridian (-180 to 180 is an edge along it or along a pole,
    as in the whole-world box, not a crossing of zero length)."""
    lon = ring[:, 0]
    wide = np.abs(np.diff(lon)) > 180
    on_meridian = (np.abs(lon[:-1]) == 180) & (np.abs(lon[1:]) == 180)
    return bool(np.any(wide & ~on_meridian))


def _build(polygons: list[list[np.ndarray]], zone_id: str) -> Polygonal:
    crosses = any(_crosses_antimeridian(ring) for rings in polygons for ring in rings)
    if crosses:
        polygons = [[_to_east(ring) for ring in rings] for rings in polygons]
    shapes = [Polygon(rings[0], rings[1:]) for rings in polygons]
    shape: Polygonal = shapes[0] if len(shapes) == 1 else MultiPolygon(shapes)
    if crosses:
        if not shape.is_valid:
            raise ZoneError(f"zone {zone_id}: invalid geometry: {_explain_invalid(shape, wrap=True)}")
        west = affinity.translate(shape.intersection(box(180, -90, 360, 90)), xoff=-360)
        shape = _polygonal_part(shapely.union(shape.intersection(box(-180, -90, 180, 90)), west), zone_id)
    return shape


def _to_east(ring: np.ndarray) -> np.ndarray:
    """Shift western longitudes by +360 so an antimeridian-crossing ring becomes contiguous."""
    out = ring.copy()
    out[out[:, 0] < 0, 0] += 360.0
    return out


def _polygonal_part(shape: shapely.Geometry, zone_id: str) -> Polygonal:
    parts = [g for g in shapely.get_parts(shape) if isinstance(g, Polygon) and not g.is_empty]
    if not parts:
        raise ZoneError(f"zone {zone_id}: geometry has no area left after repair")
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


_REASON = re.compile(r"^(?P<what>[^\[]+)\[(?P<x>\S+) (?P<y>\S+)\]")


def _explain_invalid(shape: Polygonal, *, wrap: bool = False) -> str:
    """Shapely's reason ('Self-intersection[13.4 52.5]') as 'Self-intersection at lon 13.4, lat 52.5'."""
    reason = shapely.is_valid_reason(shape)
    match = _REASON.match(reason)
    if not match:
        return reason
    lon = float(match["x"])
    if wrap and lon > 180:
        lon -= 360
    return f"{match['what'].strip()} at lon {lon:.7f}, lat {float(match['y']):.7f}"
