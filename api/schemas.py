"""Response models: what each route answers, so the OpenAPI document describes every body.

GeoJSON routes serialise their bodies themselves (orjson, `application/geo+json`); the models here
declare the same shape for the document and for the schema tests. The others return these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.fleetview import VehicleState

Position = list[float]  # [longitude, latitude], RFC 7946 order


class PointGeometry(BaseModel):
    type: Literal["Point"]
    coordinates: Position = Field(min_length=2, max_length=3)


class LineStringGeometry(BaseModel):
    type: Literal["LineString"]
    coordinates: list[Position] = Field(min_length=2)


class VehicleProperties(BaseModel):
    state: VehicleState
    speed_kmh: float | None = None
    heading_deg: float | None = None
    battery_pct: float | None = None
    odometer_m: float | None = None
    locked: bool | None = None
    fix: int | None = None
    satellites: int | None = None
    hdop: float | None = None
    accuracy_m: float | None = None
    altitude_m: float | None = None
    source: str | None = None
    online: bool | None = None
    faults: list[str] = Field(default_factory=list)
    device_time: datetime | None = None
    last_seen: datetime | None = None


class VehicleFeature(BaseModel):
    type: Literal["Feature"]
    id: str
    geometry: PointGeometry
    properties: VehicleProperties


class VehicleCollection(BaseModel):
    type: Literal["FeatureCollection"]
    features: list[VehicleFeature]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")
    count: int


class TrackProperties(BaseModel):
    device_id: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    points: int = Field(description="positions in the line")
    bucket_s: float | None = Field(description="seconds per time_bucket when downsampled, else null")
    times: list[datetime] = Field(description="the time of each position, in order")


class TrackFeature(BaseModel):
    type: Literal["Feature"]
    geometry: LineStringGeometry | None = Field(description="null with fewer than two positions")
    properties: TrackProperties


class ZoneEvent(BaseModel):
    time: datetime
    device_id: str
    zone_id: str
    kind: Literal["enter", "exit", "cross", "dwell", "violation"]
    violation: str | None
    lon: float
    lat: float
    detail: dict[str, Any]


class Trip(BaseModel):
    device_id: str
    start_time: datetime
    end_time: datetime
    start: Position
    end: Position
    distance_m: float
    duration_s: float
    points: int
    ongoing: bool


class UtilizationFigures(BaseModel):
    utilization: float | None = Field(description="ride time over in-service time; null without service time")
    ride_hours: float
    idle_hours: float
    in_service_hours: float
    maintenance_hours: float
    vehicles_in_service: int
    vehicles_in_maintenance: int
    avg_vehicles_in_service: float
    avg_vehicles_riding: float


class UtilizationBucket(UtilizationFigures):
    start: datetime


class Utilization(BaseModel):
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    bucket: Literal["hour", "day"]
    device_id: str | None
    buckets: list[UtilizationBucket]
    total: UtilizationFigures


class DeviceUtilization(UtilizationFigures):
    device_id: str


class DeviceUtilizationPage(BaseModel):
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    devices: list[DeviceUtilization]


class ZoneActivityBucket(BaseModel):
    start: datetime
    enter: int
    exit: int
    cross: int
    dwell: int
    violation: int
    trips_started: int
    trips_ended: int


class ZoneActivity(BaseModel):
    zone_id: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    bucket: Literal["hour", "day"]
    buckets: list[ZoneActivityBucket]
    vehicles_inside: int = Field(description="live vehicles standing in the zone now")


class DeadLetter(BaseModel):
    stream_entry: str
    seq: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    count: int
    size: int | None
    sha256: str | None = Field(description="hex digest of the whole refused payload")
    payload_base64: str = Field(description="the first KiB of the refused bytes")


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None


class ReasonCount(BaseModel):
    reason: str
    letters: int = Field(description="dead-letter rows")
    messages: int = Field(description="lines or records they stand for (sum of count)")


class DeadLetterCounts(BaseModel):
    since: datetime | None
    until: datetime | None
    reasons: list[ReasonCount]


class PositionsHealth(BaseModel):
    """The hand-off to the geofence stage; `overflowed` is the one flag to alert on."""

    geofence_lag_entries: int | None = Field(description="entries not yet delivered to geofence; null without it")
    geofence_pending_entries: int | None = Field(description="delivered, not yet acknowledged; null without it")
    dropped_records: int = Field(description="records the stream's bound dropped before geofence read them")
    dropped_entries: int
    overflowed: bool


class Health(BaseModel):
    status: Literal["ok"]
    counters: dict[str, int]
    positions: PositionsHealth


class StageLag(BaseModel):
    stream: str
    group: str
    lag: int | None = Field(description="entries not yet delivered to the group; null if unknown")
    pending: int | None = Field(description="delivered, not yet acknowledged")


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]
    stages: dict[str, StageLag]


class ZoneGeometry(BaseModel):
    type: Literal["Polygon", "MultiPolygon"]
    coordinates: list[Any]


class ZoneProperties(BaseModel):
    kind: Literal["service_area", "no_parking", "slow", "no_ride"]
    name: str
    speed_limit_kmh: float | None
    version: int
    created_at: datetime
    updated_at: datetime


class ZoneFeature(BaseModel):
    type: Literal["Feature"]
    id: str
    geometry: ZoneGeometry
    properties: ZoneProperties


class ZoneCollection(BaseModel):
    type: Literal["FeatureCollection"]
    features: list[ZoneFeature]


class ApiKeyPublic(BaseModel):
    id: str
    name: str
    role: Literal["viewer", "operator", "admin"]
    created_at: datetime | None
    created_by: str | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="the key itself: shown in this answer only")


class AuditEntry(BaseModel):
    id: int
    time: datetime
    key_id: str | None
    key_name: str
    role: str | None
    action: str
    route: str | None
    target: str | None
    before: Any
    after: Any


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_before_id: int | None


class ServiceChange(BaseModel):
    since: datetime
    status: Literal["in_service", "maintenance", "inactive"]


class ServiceStatusPublic(BaseModel):
    device_id: str
    status: Literal["in_service", "maintenance", "inactive"]
    since: datetime


class ServiceHistory(BaseModel):
    device_id: str
    status: Literal["in_service", "maintenance", "inactive"]
    history: list[ServiceChange]


def body_of(model: type[BaseModel], media_type: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that serialises its own body (GeoJSON, MDS): `model` under its media type."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {status: {"model": model, "content": {media_type: {"schema": ref}}}}
