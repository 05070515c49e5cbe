"""Zone parsing: GeoJSON in, valid normalised shapely out, and clear errors for everything else."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from geofence.errors import GeofenceError, ZoneError
from geofence.zones import Zone, ZoneKind, parse_zone, zone_to_feature


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def polygon(*rings: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def test_polygon_with_hole_is_parsed_valid_and_oriented() -> None:
    zone = parse_zone(
        polygon(square(13.0, 52.0, 13.1, 52.1), square(13.02, 52.02, 13.03, 52.03)),
        id="z1",
        kind="no_parking",
        name="Station",
    )
    assert zone.kind is ZoneKind.NO_PARKING and zone.name == "Station"
    assert zone.geometry.is_valid and len(zone.geometry.interiors) == 1
    assert zone.geometry.exterior.is_ccw  # RFC 7946: shells counter-clockwise
    assert not zone.geometry.contains(shapely.Point(13.025, 52.025))


def test_feature_and_multipolygon_are_accepted() -> None:
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [[square(0, 0, 1, 1)], [square(2, 0, 3, 1), square(2.2, 0.2, 2.4, 0.4)]],
        },
    }
    zone = parse_zone(feature, id="m", kind=ZoneKind.SLOW, speed_limit_kmh=15)
    assert isinstance(zone.geometry, MultiPolygon) and len(zone.geometry.geoms) == 2
    assert zone.speed_limit_kmh == 15


def test_feature_round_trip() -> None:
    zone = parse_zone(polygon(square(1, 1, 2, 2)), id="r", kind="no_ride", name="Park")
    back = zone_to_feature(zone)
    again = parse_zone(back, id="r", kind=back["properties"]["kind"], name=back["properties"]["name"])
    assert again == zone


@pytest.mark.parametrize(
    ("obj", "kwargs", "message"),
    [
        ({"type": "Point", "coordinates": [1, 2]}, {}, "must be Polygon or MultiPolygon, got 'Point'"),
        ("not a mapping", {}, "expected a GeoJSON object"),
        ({"type": "Feature", "geometry": None}, {}, "Feature has no geometry"),
        (polygon(), {}, "polygon 0 has no rings"),
        (polygon([[0, 0], [1, 0], [0, 0]]), {}, "at least 4"),
        (polygon([[0, 0], [1, 0], [1, 1], [0, 1]]), {}, "not closed"),
        (polygon([[0, 0], ["a", 0], [1, 1], [0, 0]]), {}, "number pairs"),
        (polygon([[0, 0], [1, 0], [1, float("nan")], [0, 0]]), {}, "finite"),
        (polygon(square(170, 0, 181, 1)), {}, "outside lon/lat range"),
        (polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]), {}, "Self-intersection at lon 0.5000000, lat 0.5000000"),
        (polygon(square(0, 0, 1, 1)), {"kind": "parking"}, "unknown kind 'parking'"),
        (polygon(square(0, 0, 1, 1)), {"kind": "slow"}, "needs speed_limit_kmh"),
        (polygon(square(0, 0, 1, 1)), {"kind": "slow", "speed_limit_kmh": -5}, "speed_limit_kmh must be"),
        (polygon([[0, 0], [1, 0], [2, 0], [0, 0]]), {}, "invalid geometry"),
    ],
)
def test_bad_zones_raise_a_clear_zone_error(obj: Any, kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"kind": "no_parking", **kwargs}
    with pytest.raises(ZoneError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_zone(obj, id="bad", **kwargs)
    assert isinstance(info.value, GeofenceError | ValueError)
    assert "zone bad" in str(info.value)


def test_repair_keeps_the_polygonal_part_of_a_bow_tie() -> None:
    bow_tie = polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]])
    zone = parse_zone(bow_tie, id="b", kind="no_ride", repair=True)
    assert zone.geometry.is_valid and zone.geometry.area == pytest.approx(0.5)


def test_antimeridian_zone_is_split_into_two_parts() -> None:
    ring = [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
    zone = parse_zone(polygon(ring), id="fiji", kind="service_area")
    assert isinstance(zone.geometry, MultiPolygon)
    minx, _, maxx, _ = zone.geometry.bounds
    assert (minx, maxx) == (-180.0, 180.0)
    assert zone.geometry.area == pytest.approx(1.0)
    inside = shapely.contains_xy(zone.geometry, np.array([179.9, -179.9, 0.0]), np.array([-16.5, -16.5, -16.5]))
    assert inside.tolist() == [True, True, False]


def test_zone_constructor_checks_its_invariants() -> None:
    with pytest.raises(ZoneError, match="non-empty Polygon"):
        Zone("x", ZoneKind.NO_RIDE, Polygon())
    with pytest.raises(ZoneError, match="id"):
        Zone("", ZoneKind.NO_RIDE, Polygon(square(0, 0, 1, 1)))
