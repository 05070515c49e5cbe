"""GBFS 3.0 and MDS 2.0 documents from the fleet's own state (pure: no I/O, `now` passed in).

GBFS is public and protects riders: a vehicle's `vehicle_id` is a random id that changes after every
trip (`rotate`), and a vehicle in an active rental (an ongoing trip, or unlocked) is not listed.
MDS is for the city, behind a key: `vehicle_id` is the vehicle's persistent code (our device id) and
`device_id` a UUID derived from it (`mds_device_id`), timestamps integer milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GBFS_VERSION = "3.0"
VEHICLE_TYPE_ID = "ebike"
MAX_RANGE_M = 60_000.0  # a full battery; current range is this times the charge
VEHICLE_STATUS_TTL_S = 30
STATIC_TTL_S = 3600
ZONES_TTL_S = 60
MAX_AGE_S = 300  # GBFS: real-time data at most 5 minutes old
_NAMESPACE = uuid.UUID("6f9f3f0e-8d0b-4c1e-9a43-1f7c2b1d5e10")  # fixed: the same device, the same UUID


@dataclass(frozen=True, slots=True)
class SystemInfo:
    system_id: str = "fleet"
    name: str = "Fleet"
    language: str = "en"
    timezone: str = "Etc/UTC"
    feed_contact_email: str = "fleet@example.org"
    opening_hours: str = "24/7"
    provider_id: str = "3f8a1b2c-0d4e-4f60-8a7b-9c0d1e2f3a4b"  # MDS provider_id (a UUID given by the city)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def envelope(data: dict[str, Any], last_updated: float, ttl: int) -> dict[str, Any]:
    return {"last_updated": rfc3339(last_updated), "ttl": ttl, "version": GBFS_VERSION, "data": data}


GBFS_FEEDS = ("system_information", "vehicle_types", "vehicle_status", "geofencing_zones")


def discovery(base_url: str, now: float) -> dict[str, Any]:
    feeds = [{"name": name, "url": f"{base_url}/{name}.json"} for name in GBFS_FEEDS]
    return envelope({"feeds": feeds}, now, STATIC_TTL_S)


def system_information(info: SystemInfo, now: float) -> dict[str, Any]:
    name = [{"text": info.name, "language": info.language}]
    data = {"system_id": info.system_id, "languages": [info.language], "name": name,
            "opening_hours": info.opening_hours, "feed_contact_email": info.feed_contact_email,
            "timezone": info.timezone}  # fmt: skip
    return envelope(data, now, STATIC_TTL_S)


def vehicle_types(info: SystemInfo, now: float) -> dict[str, Any]:
    ebike = {"vehicle_type_id": VEHICLE_TYPE_ID, "form_factor": "bicycle", "propulsion_type": "electric_assist",
             "max_range_meters": MAX_RANGE_M, "name": [{"text": "E-bike", "language": info.language}]}  # fmt: skip
    return envelope({"vehicle_types": [ebike]}, now, STATIC_TTL_S)


@dataclass(frozen=True, slots=True)
class PublicId:
    """The GBFS id a vehicle shows, and the start of the last trip it was given after (None: none yet)."""

    public_id: str
    after_trip: datetime | None


def rotate(
    current: Mapping[str, PublicId], last_trip: Mapping[str, datetime], device_ids: Iterable[str],
    new_id: Callable[[], str],
) -> dict[str, PublicId]:  # fmt: skip
    """The ids that must change: a vehicle without one, and one whose last trip is newer than the trip
    its id was given after. A vehicle's id stays the same between two trips."""
    changed = {}
    for device_id in device_ids:
        trip = last_trip.get(device_id)
        held = current.get(device_id)
        if held is None or (trip is not None and (held.after_trip is None or trip > held.after_trip)):
            changed[device_id] = PublicId(new_id(), trip)
    return changed


def in_rental(state: Mapping[str, Any], ongoing: bool) -> bool:
    return ongoing or state.get("locked") is False


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gbfs_vehicle(public_id: str, state: Mapping[str, Any], disabled: bool) -> dict[str, Any] | None:
    """A parked vehicle as GBFS shows it; None when it has no position."""
    lon, lat = _num(state.get("lon")), _num(state.get("lat"))
    if lon is None or lat is None:
        return None
    vehicle: dict[str, Any] = {
        "vehicle_id": public_id, "lat": round(lat, 6), "lon": round(lon, 6), "is_reserved": False,
        "is_disabled": disabled, "vehicle_type_id": VEHICLE_TYPE_ID,
    }  # fmt: skip
    if (ts := _num(state.get("ts"))) is not None:
        vehicle["last_reported"] = rfc3339(ts)
    battery = _num(state.get("battery_pct"))
    charge = min(max(battery / 100.0, 0.0), 1.0) if battery is not None else 0.0
    vehicle["current_fuel_percent"] = round(charge, 3)
    vehicle["current_range_meters"] = round(charge * MAX_RANGE_M, 1)
    return vehicle


def is_fresh(state: Mapping[str, Any], now: float) -> bool:
    """Heard from within the last five minutes (its last report, by our clock)."""
    seen = _num(state.get("seen"))
    return seen is not None and now - seen <= MAX_AGE_S


# zone kind → (ride start, ride end, ride through allowed); earlier kinds take precedence in GBFS
_RULES = {"no_ride": (False, False, False), "no_parking": (True, False, True), "slow": (True, True, True),
          "service_area": (True, True, True)}  # fmt: skip


def geofencing_zones(zones: Iterable[Mapping[str, Any]], info: SystemInfo, now: float) -> dict[str, Any]:
    """Our zones as GBFS geofencing zones (each a MultiPolygon); outside every service area, if there
    is one, rides may pass but not start or end (`global_rules`)."""
    ordered = sorted(zones, key=lambda z: (list(_RULES).index(z["kind"]), z["id"]))
    features = []
    for zone in ordered:
        start, end, through = _RULES[zone["kind"]]
        rule: dict[str, Any] = {"vehicle_type_ids": [VEHICLE_TYPE_ID], "ride_start_allowed": start,
                                "ride_end_allowed": end, "ride_through_allowed": through}  # fmt: skip
        if zone["kind"] == "slow" and zone.get("speed_limit_kmh") is not None:
            rule["maximum_speed_kph"] = int(zone["speed_limit_kmh"])
        geometry = zone["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        properties: dict[str, Any] = {"rules": [rule]}
        if zone.get("name"):
            properties["name"] = [{"text": zone["name"], "language": info.language}]
        features.append({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": polygons},
                         "properties": properties})  # fmt: skip
    bounded = any(z["kind"] == "service_area" for z in ordered)
    global_rule = {"ride_start_allowed": not bounded, "ride_end_allowed": not bounded, "ride_through_allowed": True}
    data = {"geofencing_zones": {"type": "FeatureCollection", "features": features}, "global_rules": [global_rule]}
    return envelope(data, now, ZONES_TTL_S)


# -- MDS 2.0 --------------------------------------------------------------------------------------


def mds_device_id(device_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, device_id))


def millis(epoch: float) -> int:
    return round(epoch * 1000)


def trip_uuid(device_id: str, start: datetime) -> str:
    """A trip's MDS id: from its key (device, start), so it never changes while the trip grows."""
    return str(uuid.uuid5(_NAMESPACE, f"trip:{device_id}@{start.astimezone(UTC).isoformat()}"))


def mds_vehicle(info: SystemInfo, device_id: str) -> dict[str, Any]:
    return {"device_id": mds_device_id(device_id), "provider_id": info.provider_id, "vehicle_id": device_id,
            "vehicle_type": "bicycle", "vehicle_attributes": {}, "propulsion_types": ["electric_assist"]}  # fmt: skip


def mds_telemetry(
    info: SystemInfo, device_id: str, t: datetime, lon: float, lat: float, extra: Mapping[str, Any],
    trip_start: datetime | None,
) -> dict[str, Any]:  # fmt: skip
    """One stored report as MDS telemetry; `trip_start` is the start of the trip it lies in, if any."""
    gps: dict[str, Any] = {"lat": lat, "lng": lon}
    for ours, theirs in (("altitude_m", "altitude"), ("heading_deg", "heading"), ("accuracy_m", "horizontal_accuracy")):
        if extra.get(ours) is not None:
            gps[theirs] = float(extra[ours])
    if extra.get("satellites") is not None:
        gps["satellites"] = int(extra["satellites"])
    if extra.get("speed_kmh") is not None:
        gps["speed"] = float(extra["speed_kmh"]) / 3.6  # metres per second
    record: dict[str, Any] = {
        "device_id": mds_device_id(device_id),
        "provider_id": info.provider_id,
        "telemetry_id": str(uuid.uuid5(_NAMESPACE, f"{device_id}@{t.astimezone(UTC).isoformat()}")),
        "timestamp": millis(t.timestamp()),
        "trip_ids": [trip_uuid(device_id, trip_start)] if trip_start is not None else None,
        "journey_id": None,
        "location": gps,
    }
    battery = extra.get("battery_pct")
    if battery is not None:
        record["battery_percent"] = min(max(round(float(battery)), 0), 100)
    return record
