"""Live vehicle state → RFC 7946 GeoJSON (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

_PROPERTIES = (
    "speed_kmh", "heading_deg", "battery_pct", "odometer_m", "locked", "fix", "satellites",
    "hdop", "accuracy_m", "altitude_m", "source", "online",
)  # fmt: skip


def _iso(epoch: object) -> str | None:
    if not isinstance(epoch, int | float):
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def vehicle_feature(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A vehicle with no known position yet has no place on the map: None."""
    lat, lon = state.get("lat"), state.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    properties: dict[str, Any] = {name: state.get(name) for name in _PROPERTIES}
    faults = state.get("faults")
    properties["faults"] = list(faults) if isinstance(faults, list) else []  # Lua's cjson turns [] into {}
    properties["device_time"] = _iso(state.get("ts"))
    properties["last_seen"] = _iso(state.get("seen"))
    return {
        "type": "Feature",
        "id": state["id"],
        # RFC 7946: longitude first; 7 decimals is about 1 cm, all GPS can resolve.
        "geometry": {"type": "Point", "coordinates": [round(float(lon), 7), round(float(lat), 7)]},
        "properties": properties,
    }


def feature_collection(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    features = [f for f in map(vehicle_feature, states) if f is not None]
    features.sort(key=lambda f: f["id"])
    return {"type": "FeatureCollection", "features": features}
