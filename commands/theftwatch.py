"""The command service's theft watch: which vehicles are locked by a confirmed command, and the
`theft_suspected` events raised when one moves (stored with the zone events, published live)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import psycopg
import redis
from psycopg.types.json import Jsonb

from commands.model import Rules, Vehicle
from commands.theft import Suspicion, Watch, watch
from kernel import keys

EVENTS_CHANNEL = keys.EVENTS_CHANNEL  # the geofence worker's live channel: one JSON message per event
THEFT = "theft_suspected"


@dataclass(frozen=True, slots=True)
class Raised:
    device_id: str
    at: datetime
    suspicion: Suspicion


class TheftWatch:
    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self.watches: dict[str, Watch] = {}

    def load(self, conn: psycopg.Connection, busy: set[str], vehicles: dict[str, Vehicle]) -> None:
        """Devices whose latest confirmed lock or unlock is a lock, unless a newer one is under way."""
        rows = conn.execute(
            "SELECT DISTINCT ON (device_id) device_id, action FROM commands"
            " WHERE state = 'confirmed' AND action IN ('lock', 'unlock') ORDER BY device_id, updated_at DESC"
        ).fetchall()
        self.watches = {}
        for device_id, action in rows:
            if action == "lock" and device_id not in busy:
                self.locked(device_id, vehicles.get(device_id, Vehicle()))

    def locked(self, device_id: str, vehicle: Vehicle) -> None:
        here = None if vehicle.lon is None or vehicle.lat is None else (vehicle.lon, vehicle.lat)
        self.watches[device_id] = Watch(anchor=here)

    def released(self, device_id: str) -> None:
        self.watches.pop(device_id, None)

    def observe(self, device_id: str, vehicle: Vehicle, now: datetime) -> Raised | None:
        previous = self.watches.get(device_id)
        if previous is None:
            return None
        self.watches[device_id], suspicion = watch(previous, vehicle, now, self._rules)
        return None if suspicion is None else Raised(device_id, vehicle.seen or now, suspicion)

    def store(self, conn: psycopg.Connection, client: redis.Redis, raised: list[Raised]) -> None:
        """Into `zone_events` as a violation without a zone, and onto the live events channel."""
        rows = [r for r in raised if r.suspicion.lon is not None and r.suspicion.lat is not None]
        with conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO zone_events (time, device_id, zone_id, kind, violation, lon, lat, detail)"
                " VALUES (%s, %s, '', 'violation', %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(r.at, r.device_id, THEFT, r.suspicion.lon, r.suspicion.lat, Jsonb(_detail(r))) for r in rows],
            )
        pipe = client.pipeline(transaction=False)
        for r in raised:
            pipe.publish(EVENTS_CHANNEL, _message(r))
        pipe.execute()


def _detail(r: Raised) -> dict[str, object]:
    return {"reason": r.suspicion.reason, "speed_kmh": r.suspicion.speed_kmh, "moved_m": r.suspicion.moved_m}


def _message(r: Raised) -> bytes:
    return orjson.dumps({
        "type": "zone_event", "device_id": r.device_id, "zone_id": "", "kind": "violation", "violation": THEFT,
        "time": r.at.astimezone(UTC).isoformat(), "lon": r.suspicion.lon, "lat": r.suspicion.lat,
        "detail": _detail(r),
    })  # fmt: skip
