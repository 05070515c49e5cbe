"""A zone's size is bounded, and the whole world is a zone (not mistaken for an antimeridian crossing)."""

from __future__ import annotations

import pytest

from geofence.errors import ZoneError
from geofence.zones import MAX_VERTICES, parse_zone

WORLD = [[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]


@pytest.mark.parametrize("ring", [WORLD, WORLD[::-1], [[180, 90], [-180, 90], [-180, -90], [180, -90], [180, 90]]])
def test_the_whole_world_is_a_zone(ring: list[list[float]]) -> None:
    zone = parse_zone({"type": "Polygon", "coordinates": [ring]}, id="world", kind="service_area")
    assert zone.geometry.bounds == (-180.0, -90.0, 180.0, 90.0)
    assert zone.geometry.area == 360 * 180


def test_a_ring_across_the_antimeridian_is_still_split() -> None:
    ring = [[170, -10], [-170, -10], [-170, 10], [170, 10], [170, -10]]
    zone = parse_zone({"type": "Polygon", "coordinates": [ring]}, id="pacific", kind="no_ride")
    assert zone.geometry.geom_type == "MultiPolygon" and zone.geometry.area == pytest.approx(400)


def test_vertex_limit() -> None:
    def comb(n: int) -> list[list[float]]:
        top = [[i / n, 1.0 + (i % 2) * 0.1] for i in range(n - 3)]
        return [[0.0, 0.0], [1.0, 0.0], *top[::-1], [0.0, 0.0]]

    ok = comb(MAX_VERTICES)
    assert len(ok) <= MAX_VERTICES
    parse_zone({"type": "Polygon", "coordinates": [ok]}, id="ok", kind="no_ride")
    with pytest.raises(ZoneError, match=f"more than {MAX_VERTICES} vertices"):
        parse_zone({"type": "Polygon", "coordinates": [ok, ok[:5]]}, id="big", kind="no_ride")
