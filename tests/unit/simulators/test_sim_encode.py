"""Encoders: real NMEA with valid checksums, v1 JSON as the protocol spec says, OwnTracks locations."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import jsonschema
import orjson
import pynmea2
import pytest

from simulators.encode import (
    Format,
    encode_json,
    encode_json_batches,
    encode_nmea,
    encode_owntracks,
    nmea_checksum,
    nmea_lat,
    nmea_lon,
    time_key,
    topic_for,
)
from simulators.vehicle import Reading

T = datetime(2026, 11, 23, 13, 45, 7, 250_000, tzinfo=UTC).timestamp()

FIX = Reading(
    time=T, lat=52.5200066, lon=13.4049540, alt_m=34.5, speed_kmh=18.4, heading_deg=271.3, acc_m=4.2,
    fix=3, sats=9, hdop=0.92, battery_pct=76.5, odometer_m=1234567.8, locked=False, faults=(), alarm=False,
)  # fmt: skip
NO_FIX = Reading(
    time=T, lat=None, lon=None, alt_m=None, speed_kmh=0.0, heading_deg=0.0, acc_m=None, fix=0, sats=2,
    hdop=None, battery_pct=12.0, odometer_m=5.0, locked=True, faults=("E12",), alarm=True,
)  # fmt: skip

NUMBER = {"type": "number"}
RECORD = {
    "type": "object",
    "properties": {
        "v": {"const": 1},
        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "ts": {"anyOf": [{"type": "string", "format": "date-time"}, NUMBER]},
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "alt_m": NUMBER,
        "speed_kmh": {"type": "number", "minimum": 0, "exclusiveMaximum": 400},
        "heading_deg": {"type": "number", "minimum": 0, "exclusiveMaximum": 360},
        "acc_m": {"type": "number", "minimum": 0},
        "fix": {"enum": [0, 2, 3]},
        "sats": {"type": "integer", "minimum": 0},
        "hdop": {"type": "number", "minimum": 0},
        "battery_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "odometer_m": {"type": "number", "minimum": 0},
        "locked": {"type": "boolean"},
        "faults": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["ts"],
    "dependentRequired": {"lat": ["lon"], "lon": ["lat"]},
}
SINGLE = {**RECORD, "required": ["v", "ts"]}
BATCH = {
    "type": "object",
    "properties": {"v": {"const": 1}, "records": {"type": "array", "items": RECORD, "maxItems": 1000}},
    "required": ["v", "records"],
}
CHECKER = jsonschema.FormatChecker()


def test_json_single_record_follows_protocol_v1() -> None:
    for reading in (FIX, NO_FIX):
        for epoch in (False, True):
            doc = orjson.loads(encode_json(reading, "bike-1", epoch_ts=epoch))
            jsonschema.validate(doc, SINGLE, format_checker=CHECKER)
            assert doc["id"] == "bike-1"
            ts = doc["ts"] if epoch else datetime.fromisoformat(doc["ts"]).timestamp()
            assert ts == pytest.approx(T, abs=1e-3)


def test_json_without_fix_has_no_position() -> None:
    doc = orjson.loads(encode_json(NO_FIX, "bike-1"))
    assert doc["fix"] == 0 and "lat" not in doc and "lon" not in doc
    assert doc["faults"] == ["E12"] and doc["locked"] is True


def test_json_batches_respect_size_and_count_limits() -> None:
    readings = [FIX.__class__(**{**_fields(FIX), "time": T + i}) for i in range(2500)]
    batches = encode_json_batches(readings, "bike-1", max_bytes=16 * 1024)
    seen = []
    for payload in batches:
        assert len(payload) <= 16 * 1024
        doc = orjson.loads(payload)
        jsonschema.validate(doc, BATCH, format_checker=CHECKER)
        seen.extend(datetime.fromisoformat(r["ts"]).timestamp() for r in doc["records"])
    assert seen == pytest.approx([T + i for i in range(2500)])
    small = encode_json_batches(readings, "bike-1", max_bytes=10**9)
    assert [len(orjson.loads(p)["records"]) for p in small] == [1000, 1000, 500]


def _fields(reading: Reading) -> dict[str, object]:
    return {name: getattr(reading, name) for name in reading.__slots__}


def test_nmea_sentences_have_valid_checksums_and_the_right_values() -> None:
    lines = encode_nmea(FIX, "GN").decode("ascii").split("\r\n")
    assert lines[-1] == ""
    rmc, gga, vtg = (pynmea2.parse(line, check=True) for line in lines[:3])
    assert rmc.sentence_type == "RMC" and rmc.talker == "GN" and rmc.status == "A"
    assert rmc.latitude == pytest.approx(FIX.lat, abs=1e-6)
    assert rmc.longitude == pytest.approx(FIX.lon, abs=1e-6)
    assert float(rmc.spd_over_grnd) * 1.852 == pytest.approx(FIX.speed_kmh, abs=0.01)
    assert rmc.datetime.replace(tzinfo=UTC).timestamp() == pytest.approx(T, abs=0.01)
    assert gga.gps_qual == 1 and int(gga.num_sats) == 9 and float(gga.altitude) == FIX.alt_m
    assert float(gga.horizontal_dil) == FIX.hdop
    assert float(vtg.spd_over_grnd_kmph) == FIX.speed_kmh and float(vtg.true_track) == FIX.heading_deg


def test_nmea_without_fix_says_so() -> None:
    lines = encode_nmea(NO_FIX).decode("ascii").split("\r\n")[:3]
    rmc, gga, vtg = (pynmea2.parse(line, check=True) for line in lines)
    assert rmc.status == "V" and rmc.lat == "" and gga.gps_qual == 0 and vtg.true_track is None


def test_nmea_checksum_matches_a_known_sentence() -> None:
    known = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
    assert nmea_checksum(known[1:-3]) == "47"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (52.52, ("5231.20000", "N")),
        (-33.8688, ("3352.12800", "S")),
        (10.999999999, ("1100.00000", "N")),  # rounds up a whole degree, never 10°60'
        (0.0, ("0000.00000", "N")),
    ],
)
def test_nmea_latitude_format(value: float, expected: tuple[str, str]) -> None:
    assert nmea_lat(value) == expected


def test_nmea_longitude_has_three_degree_digits() -> None:
    assert nmea_lon(-0.1278) == ("00007.66800", "W")
    assert nmea_lon(179.99) == ("17959.40000", "E")


def test_owntracks_location() -> None:
    doc = orjson.loads(encode_owntracks(FIX, "b1"))
    assert doc["_type"] == "location" and doc["tid"] == "b1"
    assert doc["tst"] == math.floor(T) and isinstance(doc["tst"], int)
    assert (doc["lat"], doc["lon"]) == (FIX.lat, FIX.lon)
    assert doc["vel"] == 18 and doc["cog"] == 271 and doc["batt"] == 76 and doc["acc"] == 4 and doc["alt"] == 34
    assert encode_owntracks(NO_FIX, "b1") is None


def test_topics_and_time_resolution_per_format() -> None:
    assert topic_for(Format.JSON, "a") == "fleet/a/telemetry"
    assert topic_for(Format.NMEA, "a") == "fleet/a/nmea"
    assert topic_for(Format.OWNTRACKS, "a") == "owntracks/a/bike"
    assert time_key(Format.JSON, 10.12345) == 10.123
    assert time_key(Format.NMEA, 10.12345) == 10.12
    assert time_key(Format.OWNTRACKS, 10.9) == 10.0
