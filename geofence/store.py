"""The geofence tables in TimescaleDB: zones, zone events, trips, service status, utilization rollup.

Shared by the worker (`geofence.service`) and the API, so both speak SQL through the same functions.
Every write is idempotent (ON CONFLICT on the natural key), which is what lets the worker replay a
batch after a crash without duplicating anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import psycopg
from psycopg.types.json import Jsonb
from shapely.geometry import mapping

from geofence.errors import GeofenceError, ZoneError
from geofence.transitions import ZoneEvent
from geofence.trips import Trip
from geofence.utilization import HOUR_S, ServiceChange, ServiceStatus, utilization
from geofence.zones import Zone, parse_zone, zone_to_feature


class StoreError(GeofenceError):
    """A request the stored data refuses: a zone id taken, a device that is not registered."""


class ZoneExists(StoreError):
    pass


class UnknownDevice(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class StoredZone:
    zone: Zone
    version: int
    created_at: datetime
    updated_at: datetime

    def feature(self) -> dict[str, Any]:
        feature = zone_to_feature(self.zone)
        feature["properties"].update(
            version=self.version, created_at=iso(self.created_at), updated_at=iso(self.updated_at)
        )
        return feature


@dataclass(frozen=True, slots=True)
class ZoneChanges:
    """Zones changed or removed after some catalog version, up to `version`."""

    version: int
    changed: list[Zone]
    removed: list[str]
    refused: list[tuple[str, str]]  # (zone id, reason): rows written past the API that do not parse


def connect(database_url: str, name: str = "fleet api") -> psycopg.Connection:
    return psycopg.connect(database_url, connect_timeout=5, application_name=name[:63])


# -- zones ----------------------------------------------------------------------------------------
_ZONE_COLUMNS = "id, kind, name, speed_limit_kmh, geometry, version, created_at, updated_at"


def _zone_row(row: Sequence[Any]) -> StoredZone:
    zid, kind, name, limit, geometry, version, created, updated = row
    return StoredZone(
        parse_zone(geometry, id=zid, kind=kind, speed_limit_kmh=limit, name=name), version, created, updated
    )


def _zone_params(zone: Zone) -> tuple[Any, ...]:
    return zone.kind.value, zone.name, zone.speed_limit_kmh, Jsonb(mapping(zone.geometry), dumps=_dumps)


def insert_zone(conn: psycopg.Connection, zone: Zone) -> StoredZone:
    row = conn.execute(
        f"INSERT INTO zones (kind, name, speed_limit_kmh, geometry, id) VALUES (%s, %s, %s, %s, %s)"
        f" ON CONFLICT (id) DO NOTHING RETURNING {_ZONE_COLUMNS}",
        (*_zone_params(zone), zone.id),
    ).fetchone()
    if row is None:
        raise ZoneExists(f"zone {zone.id!r} already exists (PUT /v1/zones/{zone.id} replaces it)")
    return _zone_row(row)


def replace_zone(conn: psycopg.Connection, zone: Zone) -> StoredZone | None:
    row = conn.execute(
        f"UPDATE zones SET kind = %s, name = %s, speed_limit_kmh = %s, geometry = %s WHERE id = %s"
        f" RETURNING {_ZONE_COLUMNS}",
        (*_zone_params(zone), zone.id),
    ).fetchone()
    return _zone_row(row) if row else None


def delete_zone(conn: psycopg.Connection, zone_id: str) -> bool:
    return conn.execute("DELETE FROM zones WHERE id = %s", (zone_id,)).rowcount > 0


def get_zone(conn: psycopg.Connection, zone_id: str) -> StoredZone | None:
    row = conn.execute(f"SELECT {_ZONE_COLUMNS} FROM zones WHERE id = %s", (zone_id,)).fetchone()
    return _zone_row(row) if row else None


def list_zones(conn: psycopg.Connection) -> list[StoredZone]:
    return [_zone_row(r) for r in conn.execute(f"SELECT {_ZONE_COLUMNS} FROM zones ORDER BY id")]


def zone_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT version FROM zone_catalog").fetchone()
    return int(row[0]) if row else 0


def zone_changes(conn: psycopg.Connection, since: int) -> ZoneChanges:
    """Everything after catalog version `since`: versions commit in order (see the migration), so
    reading the catalog first and then the rows up to it misses nothing and sees nothing twice."""
    version = zone_version(conn)
    changed, refused = [], []
    rows = conn.execute(
        f"SELECT {_ZONE_COLUMNS} FROM zones WHERE version > %s AND version <= %s", (since, version)
    ).fetchall()
    for row in rows:
        try:
            changed.append(_zone_row(row).zone)
        except ZoneError as exc:
            refused.append((row[0], str(exc)))
    present = {r[0] for r in rows}
    deleted = conn.execute(
        "SELECT DISTINCT zone_id FROM zone_deletions WHERE version > %s AND version <= %s", (since, version)
    ).fetchall()
    removed = [zid for (zid,) in deleted if zid not in present]
    removed += [zid for zid, _ in refused]  # an unreadable zone is not applied in its old shape either
    return ZoneChanges(version, changed, removed, refused)


# -- events and trips -----------------------------------------------------------------------------
_EVENTS = (
    "INSERT INTO zone_events (time, device_id, zone_id, kind, violation, lon, lat, detail)"
    " SELECT t, d, z, k, v, x, y, j::jsonb FROM unnest(%b::timestamptz[], %b::text[], %b::text[], %b::text[],"
    " %b::text[], %b::float8[], %b::float8[], %b::text[]) AS u(t, d, z, k, v, x, y, j)"
    " ON CONFLICT (device_id, zone_id, kind, time) DO NOTHING"
)


def insert_events(conn: psycopg.Connection, events: Sequence[ZoneEvent]) -> int:
    """All events in one statement; ones already stored (a replayed batch) are skipped."""
    if not events:
        return 0
    columns = [list(c) for c in zip(*(event_row(e) for e in events), strict=True)]
    # binary parameters (%b): text ones escape every array element through a regular expression,
    # the worker's largest cost in Python when every position is a transition
    return conn.execute(_EVENTS, columns).rowcount


def event_row(e: ZoneEvent) -> tuple[Any, ...]:
    violation = e.detail.get("violation")
    detail = _dumps(e.detail).decode()
    return (
        e.time,
        e.device_id,
        e.zone_id,
        e.kind.value,
        None if violation is None else str(violation),
        e.lon,
        e.lat,
        detail,
    )


_TRIPS = (
    "INSERT INTO trips (device_id, start_time, end_time, start_lon, start_lat, end_lon, end_lat, distance_m,"
    " duration_s, points, ongoing) SELECT * FROM unnest(%b::text[], %b::timestamptz[], %b::timestamptz[],"
    " %b::float8[], %b::float8[], %b::float8[], %b::float8[], %b::float8[], %b::float8[], %b::int[], %b::bool[])"
    " ON CONFLICT (device_id, start_time) DO UPDATE SET end_time = excluded.end_time, end_lon = excluded.end_lon,"
    " end_lat = excluded.end_lat, distance_m = excluded.distance_m, duration_s = excluded.duration_s,"
    " points = excluded.points, ongoing = excluded.ongoing, updated_at = now()"
)


def upsert_trips(conn: psycopg.Connection, trips: Sequence[Trip]) -> int:
    """Insert new trips, grow ongoing ones (same device and start) to their latest extent."""
    latest = {(t.device_id, t.start): t for t in trips}  # one row per key: ON CONFLICT DO UPDATE needs it
    if not latest:
        return 0
    rows = [
        (t.device_id, t.start, t.end, t.start_lon, t.start_lat, t.end_lon, t.end_lat, t.distance_m, t.duration_s,
         t.points, t.ongoing)
        for t in latest.values()
    ]  # fmt: skip
    return conn.execute(_TRIPS, [list(c) for c in zip(*rows, strict=True)]).rowcount


def close_stale_trips(conn: psycopg.Connection, before: float) -> int:
    """Ongoing trips whose vehicle has been silent since `before` are over: the next report would
    close them at their last point anyway (a gap ends a run), so the table need not wait for it."""
    return conn.execute(
        "UPDATE trips SET ongoing = false, updated_at = now() WHERE ongoing AND end_time < %s", (dt(before),)
    ).rowcount


# -- service status and utilization ----------------------------------------------------------------
def set_service_status(
    conn: psycopg.Connection, device_id: str, status: ServiceStatus | str, since: datetime, now: float
) -> int:
    """Record a status change of a registered device and recompute its utilization from `since`."""
    status = ServiceStatus(status)
    if conn.execute("SELECT 1 FROM devices WHERE id = %s", (device_id,)).fetchone() is None:
        raise UnknownDevice(f"device {device_id!r} is not registered")
    conn.execute(
        "INSERT INTO device_service (device_id, time, status) VALUES (%s, %s, %s)"
        " ON CONFLICT (device_id, time) DO UPDATE SET status = excluded.status, recorded_at = now()",
        (device_id, since, status.value),
    )
    return refresh_utilization(conn, since.timestamp(), now, [device_id])


def set_device_service(
    database_url: str, device_id: str, status: ServiceStatus | str, since: datetime | None = None
) -> datetime:
    """`set_service_status` on a connection of its own (for the API and the `fleet` command);
    returns the time the status took effect. Raises `UnknownDevice` or `ValueError` (bad status)."""
    status = ServiceStatus(status)
    since = utc(since) if since else datetime.now(UTC)
    with connect(database_url, "fleet service status") as conn:
        set_service_status(conn, device_id, status, since, time.time())
    return since


def service_history(conn: psycopg.Connection, device_id: str) -> list[tuple[datetime, str]]:
    return conn.execute(
        "SELECT time, status FROM device_service WHERE device_id = %s ORDER BY time", (device_id,)
    ).fetchall()


def refresh_utilization(
    conn: psycopg.Connection, start: float, now: float, device_ids: Sequence[str] | None = None
) -> int:
    """Recompute the hourly rows from the hour holding `start` up to `now` (the current hour only as
    far as it has gone), for `device_ids` or the whole fleet; returns the rows written.

    The rows are a pure function of trips, service changes and registrations (the core's
    `utilization`), so recomputing is always safe, however often and by whomever.
    """
    h0 = math.floor(start / HOUR_S) * HOUR_S
    if now <= h0:
        return 0
    ids, changes = _fleet(conn, now, device_ids)
    scope = "" if device_ids is None else " AND device_id = ANY(%(ids)s)"
    conn.execute(
        "DELETE FROM utilization_hourly WHERE bucket >= %(h0)s AND bucket < %(h1)s" + scope,
        {"h0": dt(h0), "h1": dt(math.ceil(now / HOUR_S) * HOUR_S), "ids": list(device_ids or ())},
    )
    if not ids:
        return 0
    trips = _trip_spans(conn, ids, h0, now)
    report = utilization(trips, changes, ids, (h0, now), bucket_s=HOUR_S, initial=ServiceStatus.INACTIVE)
    d, b = np.nonzero(report.in_service_s + report.maintenance_s > 0)
    if not len(d):
        return 0
    columns = [
        report.bucket_start[b].astype(np.int64).tolist(),
        [ids[i] for i in d],
        *(getattr(report, name)[d, b].tolist() for name in ("ride_s", "idle_s", "in_service_s", "maintenance_s")),
    ]
    return conn.execute(
        "INSERT INTO utilization_hourly (bucket, device_id, ride_s, idle_s, in_service_s, maintenance_s)"
        " SELECT to_timestamp(b), d, r, i, s, m FROM unnest(%s::bigint[], %s::text[], %s::float8[], %s::float8[],"
        " %s::float8[], %s::float8[]) AS u(b, d, r, i, s, m)"
        " ON CONFLICT (device_id, bucket) DO UPDATE SET ride_s = excluded.ride_s, idle_s = excluded.idle_s,"
        " in_service_s = excluded.in_service_s, maintenance_s = excluded.maintenance_s, updated_at = now()",
        columns,
    ).rowcount


def _fleet(
    conn: psycopg.Connection, now: float, device_ids: Sequence[str] | None
) -> tuple[list[str], list[ServiceChange]]:
    """The devices to count and their status changes: registration means in service unless an
    explicit change came first; everything stops counting at `now` (the hour is not over yet)."""
    scope = "" if device_ids is None else " WHERE id = ANY(%(ids)s)"
    registered = dict(conn.execute(
        "SELECT id, extract(epoch FROM created_at)::float8 FROM devices" + scope, {"ids": list(device_ids or ())}
    ).fetchall())  # fmt: skip
    scope = "" if device_ids is None else " AND device_id = ANY(%(ids)s)"
    rows = conn.execute(
        "SELECT device_id, extract(epoch FROM time)::float8, status FROM device_service"
        " WHERE time < %(now)s" + scope + " ORDER BY device_id, time",
        {"now": dt(now), "ids": list(device_ids or ())},
    ).fetchall()
    changes = [ServiceChange(d, t, ServiceStatus(s)) for d, t, s in rows]
    first: dict[str, float] = {}
    for c in changes:
        first.setdefault(c.device_id, c.time)
    for device, created in registered.items():
        if created < first.get(device, math.inf):
            changes.append(ServiceChange(device, created, ServiceStatus.IN_SERVICE))
    ids = sorted(set(registered) | set(first))
    changes += [ServiceChange(d, now, ServiceStatus.INACTIVE) for d in ids]
    return ids, changes


def _trip_spans(conn: psycopg.Connection, ids: list[str], h0: float, now: float) -> list[Trip]:
    rows = conn.execute(
        "SELECT device_id, start_time, end_time FROM trips"
        " WHERE device_id = ANY(%s) AND end_time > %s AND start_time < %s",
        (ids, dt(h0), dt(now)),
    ).fetchall()
    return [Trip(d, a, b, 0.0, 0.0, 0.0, 0.0, 0.0, (b - a).total_seconds(), 0) for d, a, b in rows]


def latest_rollup_hour(conn: psycopg.Connection) -> float | None:
    row = conn.execute("SELECT extract(epoch FROM max(bucket))::float8 FROM utilization_hourly").fetchone()
    return None if row is None or row[0] is None else float(row[0])


# -- helpers --------------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc(value: datetime) -> datetime:
    """A time from outside (API parameters): without an offset it is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
