"""OwnTracks messages shaped as the OwnTracks booklet documents them (iOS and Android field sets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from invariants import check_decoded

from gateway.decoders import IGNORED_REASONS, Decoded, decode
from kernel.records import DecodeError, RawMessage, Source

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TST = 1748779100  # 2025-06-01T11:58:20Z

ANDROID = {
    "_type": "location",
    "BSSID": "b0:f2:8:45:94:33",
    "SSID": "Home",
    "acc": 13,
    "alt": 48,
    "batt": 81,
    "bs": 1,
    "conn": "w",
    "created_at": TST + 1,
    "lat": 51.0447,
    "lon": -114.0719,
    "m": 1,
    "t": "u",
    "tid": "jd",
    "topic": "owntracks/jane/pixel",
    "tst": TST,
    "vac": 2,
    "vel": 0,
}
IOS = {
    "_type": "location",
    "acc": 65,
    "alt": 1049,
    "batt": 54,
    "bs": 2,
    "cog": 271,
    "conn": "m",
    "lat": 51.0501234,
    "lon": -114.0851234,
    "tid": "JD",
    "tst": TST,
    "vac": 10,
    "vel": 23,
}


def run(payload: Any, topic: str = "owntracks/jane/pixel") -> Decoded:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return check_decoded(decode(RawMessage(topic, raw, NOW), now=NOW), NOW)


def reason_of(payload: Any, topic: str = "owntracks/jane/pixel") -> str:
    with pytest.raises(DecodeError) as info:
        run(payload, topic)
    return info.value.reason


def test_android_location() -> None:
    (rec,) = run(ANDROID).records
    assert rec.device_id == "jane" and rec.source is Source.OWNTRACKS
    assert rec.time == datetime(2025, 6, 1, 11, 58, 20, tzinfo=UTC)
    assert (rec.lat, rec.lon, rec.accuracy_m, rec.altitude_m) == (51.0447, -114.0719, 13, 48)
    assert (rec.battery_pct, rec.speed_kmh, rec.heading_deg) == (81, 0, None)


def test_ios_location_with_course_and_speed_in_kmh() -> None:
    (rec,) = run(IOS, "owntracks/jane/iphone").records
    assert (rec.speed_kmh, rec.heading_deg) == (23, 271)


def test_negative_speed_or_course_means_not_measured() -> None:
    (rec,) = run({**IOS, "vel": -1, "cog": -1}).records
    assert rec.speed_kmh is None and rec.heading_deg is None and rec.lat == IOS["lat"]


@pytest.mark.parametrize(
    ("payload", "topic"),
    [
        ({"_type": "lwt", "tst": TST}, "owntracks/jane/pixel"),
        ({"_type": "transition", "event": "enter", "lat": 1.0, "lon": 1.0, "tst": TST}, "owntracks/jane/pixel/event"),
        (
            {"_type": "waypoint", "desc": "Home", "lat": 1.0, "lon": 1.0, "rad": 50, "tst": TST},
            "owntracks/jane/pixel/waypoint",
        ),
        ({"_type": "card", "name": "Jane"}, "owntracks/jane/pixel/info"),
        ({"_type": "status", "iOS": {"version": "17"}}, "owntracks/jane/pixel/status"),
    ],
)
def test_other_types_are_ignored_not_dead_lettered(payload: dict[str, Any], topic: str) -> None:
    reason = reason_of(payload, topic)
    assert reason == "not_a_location" and reason in IGNORED_REASONS


def test_encrypted_payload_is_dead_lettered_with_a_hint() -> None:
    with pytest.raises(DecodeError) as info:
        run({"_type": "encrypted", "data": "Zm9v"})
    assert info.value.reason == "bad_schema" and "encryption" in info.value.detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({**ANDROID, "lat": 91.0}, "out_of_range"),
        ({**ANDROID, "lat": 0, "lon": 0}, "placeholder_fix"),
        ({**ANDROID, "batt": 101}, "out_of_range"),
        ({**ANDROID, "tst": TST + 3600}, "future_time"),
        ({**ANDROID, "tst": 12}, "bad_time"),
        ({**ANDROID, "tst": "yesterday"}, "bad_schema"),
        ({k: v for k, v in ANDROID.items() if k != "tst"}, "bad_schema"),
        ({k: v for k, v in ANDROID.items() if k != "lon"}, "bad_schema"),
        ({k: v for k, v in ANDROID.items() if k != "_type"}, "bad_schema"),
        (b'{"_type":"location","lat":1e999,"lon":1,"tst":1748779100}', "not_finite"),
        (b"[1, 2]", "bad_schema"),
        (b"{oops", "bad_json"),
    ],
)
def test_refused_locations(payload: Any, reason: str) -> None:
    assert reason_of(payload) == reason
