"""Corpus of malformed inputs: (topic, payload) -> the reason the whole message is refused.

Every reason code a decoder can raise for a whole message appears here at least once; partial
refusals (one NMEA line, one batch record) are in the per-format tests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.decoders import REASONS, decode
from kernel.records import DecodeError, RawMessage

NOW = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
T = "fleet/bike-1/telemetry"
N = "fleet/bike-1/nmea"
OT = "owntracks/bike-1/phone"
TS = "1748779000"  # 2025-06-01T12:00:00Z, 30 s before NOW

CORPUS: list[tuple[str, str, bytes, str]] = [
    # (case, topic, payload, reason)
    ("oversize", T, b"{" + b" " * 16384 + b"}", "oversize"),
    ("unknown topic", "fleet/bike-1/gps", b"{}", "bad_topic"),
    ("status is not telemetry", "fleet/bike-1/status", b"online", "bad_topic"),
    ("cmd is server to device", "fleet/bike-1/cmd", b"{}", "bad_topic"),
    ("wildcard in id", "fleet/+/telemetry", b"{}", "bad_topic"),
    ("empty", T, b"", "empty"),
    ("blank", T, b" \n\t", "empty"),
    ("not json", T, b"hello", "bad_json"),
    ("truncated", T, b'{"v":1,"ts":', "bad_json"),
    ("NaN literal", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":NaN,"lon":1}', "bad_json"),
    ("trailing garbage", T, b'{"v":1,"ts":1}x', "bad_json"),
    ("latin-1 bytes", T, b'{"v":1,"ts":"\xe9"}', "bad_json"),
    ("array", T, b"[1,2,3]", "bad_schema"),
    ("number", T, b"42", "bad_schema"),
    ("null", T, b"null", "bad_schema"),
    ("missing ts", T, b'{"v":1,"lat":1.5,"lon":2.5}', "bad_schema"),
    ("lat without lon", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":1.5}', "bad_schema"),
    ("lat as string", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":"1.5","lon":2}', "bad_schema"),
    ("sats as float", T, b'{"v":1,"ts":' + TS.encode() + b',"sats":7.5}', "bad_schema"),
    ("locked as int", T, b'{"v":1,"ts":' + TS.encode() + b',"locked":1}', "bad_schema"),
    ("faults of ints", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":[12]}', "bad_schema"),
    ("ts as bool", T, b'{"v":1,"ts":true}', "bad_schema"),
    ("records not a list", T, b'{"v":1,"records":{}}', "bad_schema"),
    ("no version", T, b'{"ts":' + TS.encode() + b"}", "bad_version"),
    ("version 2", T, b'{"v":2,"ts":' + TS.encode() + b"}", "bad_version"),
    ("id of another device", T, b'{"v":1,"id":"bike-2","ts":' + TS.encode() + b"}", "id_mismatch"),
    ("lat 90.5", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":90.5,"lon":0.1}', "out_of_range"),
    ("lon -181", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":1,"lon":-181}', "out_of_range"),
    ("negative speed", T, b'{"v":1,"ts":' + TS.encode() + b',"speed_kmh":-1}', "out_of_range"),
    ("speed 400", T, b'{"v":1,"ts":' + TS.encode() + b',"speed_kmh":400}', "out_of_range"),
    ("heading 360", T, b'{"v":1,"ts":' + TS.encode() + b',"heading_deg":360}', "out_of_range"),
    ("battery 101", T, b'{"v":1,"ts":' + TS.encode() + b',"battery_pct":101}', "out_of_range"),
    ("fix 1", T, b'{"v":1,"ts":' + TS.encode() + b',"fix":1}', "out_of_range"),
    ("negative sats", T, b'{"v":1,"ts":' + TS.encode() + b',"sats":-1}', "out_of_range"),
    ("huge sats", T, b'{"v":1,"ts":' + TS.encode() + b',"sats":' + b"9" * 400 + b"}", "out_of_range"),
    ("negative odometer", T, b'{"v":1,"ts":' + TS.encode() + b',"odometer_m":-5}', "out_of_range"),
    ("empty fault code", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":[""]}', "out_of_range"),
    ("infinite lat", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":1e999,"lon":1}', "not_finite"),
    ("infinite ts", T, b'{"v":1,"ts":-1e400}', "not_finite"),
    ("zero zero", T, b'{"v":1,"ts":' + TS.encode() + b',"lat":0,"lon":0}', "placeholder_fix"),
    ("an hour ahead", T, b'{"v":1,"ts":1748782600}', "future_time"),
    ("ISO far future", T, b'{"v":1,"ts":"2099-01-01T00:00:00Z"}', "future_time"),
    ("1980", T, b'{"v":1,"ts":315532800}', "bad_time"),
    ("negative epoch", T, b'{"v":1,"ts":-5}', "bad_time"),
    ("huge epoch", T, b'{"v":1,"ts":1e300}', "bad_time"),
    ("naive ISO", T, b'{"v":1,"ts":"2025-06-01T12:00:00"}', "bad_time"),
    ("not a date", T, b'{"v":1,"ts":"yesterday"}', "bad_time"),
    ("empty batch", T, b'{"v":1,"records":[]}', "empty"),
    ("1001 records", T, b'{"v":1,"records":[' + b",".join([b"{}"] * 1001) + b"]}", "too_many_records"),
    ("owntracks lwt", OT, b'{"_type":"lwt","tst":1748779000}', "not_a_location"),
    ("owntracks no type", OT, b'{"lat":1,"lon":1}', "bad_schema"),
    ("nmea blank", N, b"\r\n\r\n", "empty"),
    # what PostgreSQL cannot hold, or a parser cannot read safely
    (
        "NUL in a fault code",
        T,
        b'{"v":1,"ts":' + TS.encode() + b',"lat":52.5,"lon":13.4,"faults":["E\\u0000"]}',
        "bad_string",
    ),
    ("escape in a fault code", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":["\\u001b[31m"]}', "bad_string"),
    ("DEL in a fault code", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":["E\x7f"]}', "bad_string"),
    ("C1 NEL in a fault code", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":["E\xc2\x85"]}', "bad_string"),
    ("lone surrogate", T, b'{"v":1,"ts":' + TS.encode() + b',"faults":["\\ud800"]}', "bad_json"),
    ("1000 arrays deep", T, b'{"v":1,"ts":' + TS.encode() + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}", "too_deep"),
    ("1000 objects deep", T, b'{"v":1,"x":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}", "too_deep"),
    ("1000 unclosed", T, b"[" * 1000, "too_deep"),
    ("owntracks deep", OT, b'{"_type":"location","x":' + b"[" * 1000 + b"]" * 1000 + b"}", "too_deep"),
    ("owntracks string tst", OT, b'{"_type":"location","lat":1,"lon":1,"tst":"1748779000"}', "bad_schema"),
    ("owntracks batt 101", OT, b'{"_type":"location","lat":1,"lon":1,"tst":1748779000,"batt":101}', "out_of_range"),
    ("sats 256", T, b'{"v":1,"ts":' + TS.encode() + b',"sats":256}', "out_of_range"),
    ("hdop negative", T, b'{"v":1,"ts":' + TS.encode() + b',"hdop":-1}', "out_of_range"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_malformed_message_is_refused_with_its_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(RawMessage(topic, payload, NOW), now=NOW)
    assert info.value.reason == reason, info.value


def test_corpus_covers_every_whole_message_reason() -> None:
    line_or_epoch_only = {"bad_checksum", "no_fix", "simulated_fix"}  # see test_decode_nmea.py
    assert {c[3] for c in CORPUS} == REASONS - line_or_epoch_only
