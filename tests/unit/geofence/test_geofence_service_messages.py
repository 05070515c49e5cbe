"""What the geofence worker publishes and how it names itself (no servers needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from geofence.service import event_message, geofence_consumer_name
from geofence.store import event_row
from geofence.transitions import EventKind, Violation, ZoneEvent

EVENT = ZoneEvent(
    "bike-1", "slow-1", EventKind.VIOLATION, datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC), 13.4, 52.5,
    {"zone_kind": "slow", "violation": Violation.SPEEDING_IN_SLOW_ZONE, "speed_kmh": 31.5, "limit_kmh": 20.0},
)  # fmt: skip


def test_live_message_is_plain_json_with_an_iso_time() -> None:
    message = orjson.loads(event_message(EVENT))
    assert message == {
        "type": "zone_event",
        "device_id": "bike-1",
        "zone_id": "slow-1",
        "kind": "violation",
        "violation": "speeding_in_slow_zone",
        "time": "2026-05-01T12:00:00.250000Z",
        "lon": 13.4,
        "lat": 52.5,
        "detail": {"zone_kind": "slow", "violation": "speeding_in_slow_zone", "speed_kmh": 31.5, "limit_kmh": 20.0},
    }
    enter = ZoneEvent("bike-1", "z", EventKind.ENTER, EVENT.time, 13.4, 52.5, {"zone_kind": "no_ride"})
    assert orjson.loads(event_message(enter))["violation"] is None


def test_event_row_carries_the_violation_column_and_json_detail() -> None:
    row = event_row(EVENT)
    assert row[:5] == (EVENT.time, "bike-1", "slow-1", "violation", "speeding_in_slow_zone")
    assert orjson.loads(row[-1])["limit_kmh"] == 20.0


def test_consumer_name_prefers_the_instance_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_GEOFENCE_ID", "g7")
    assert geofence_consumer_name("a") == "geofence-a"
    assert geofence_consumer_name() == "geofence-g7"
    monkeypatch.delenv("FLEET_GEOFENCE_ID")
    assert geofence_consumer_name().startswith("geofence-")
