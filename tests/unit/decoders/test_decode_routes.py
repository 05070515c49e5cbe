"""Topic routing, status and command acknowledgements."""

from __future__ import annotations

import pytest

from gateway.decoders import Ack, Route, decode_ack, decode_status, route
from kernel.records import DecodeError

ACK_ID = "3f1c2a9e-8d5b-4c71-9a0e-2b6f4d8e1c07"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fleet/bike-1/telemetry", Route("telemetry", "bike-1")),
        ("fleet/bike-1/nmea", Route("nmea", "bike-1")),
        ("fleet/bike-1/status", Route("status", "bike-1")),
        ("fleet/bike-1/cmd/ack", Route("cmd_ack", "bike-1")),
        ("fleet/A.b_c-9/telemetry", Route("telemetry", "A.b_c-9")),
        ("fleet/" + "x" * 64 + "/telemetry", Route("telemetry", "x" * 64)),
        ("owntracks/jane/pixel", Route("owntracks", "jane")),
        ("owntracks/jane/pixel/event", Route("owntracks", "jane")),
        ("fleet/bike-1/cmd", None),  # server -> device, never input
        ("fleet/" + "x" * 65 + "/telemetry", None),
        ("fleet/-bike/telemetry", None),
        ("fleet/.hidden/telemetry", None),
        ("fleet/bike 1/telemetry", None),
        ("fleet/bike+1/telemetry", None),
        ("fleet/bike#/telemetry", None),
        ("fleet/bïke/telemetry", None),
        ("fleet//telemetry", None),
        ("fleet/bike-1/telemetry/extra", None),
        ("fleet/bike-1", None),
        ("/fleet/bike-1/telemetry", None),
        ("Fleet/bike-1/telemetry", None),
        ("owntracks/jane", None),
        ("owntracks/jane/pixel/a/b", None),
        ("owntracks/+/pixel", None),
        ("", None),
    ],
)
def test_route(topic: str, expected: Route | None) -> None:
    assert route(topic) == expected


def test_route_refuses_bad_device_ids_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        Route("telemetry", "a/b")


@pytest.mark.parametrize(("payload", "online"), [(b"online", True), (b"offline", False), (b"online\r\n", True)])
def test_status(payload: bytes, online: bool) -> None:
    assert decode_status(payload) is online


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "empty"), (b"  ", "empty"), (b"ONLINE", "bad_schema"), (b"1", "bad_schema"), (b"\xff", "bad_schema")],
)
def test_status_junk(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_status(payload)
    assert info.value.reason == reason


def test_ack() -> None:
    assert decode_ack(f'{{"id":"{ACK_ID}","status":"ok"}}'.encode()) == Ack(ACK_ID, "ok", "")
    ack = decode_ack(f'{{"id":"{ACK_ID}","status":"unsupported","detail":"no alarm","x":1}}'.encode())
    assert ack == Ack(ACK_ID, "unsupported", "no alarm")
    v1 = decode_ack(f'{{"v":1,"id":"{ACK_ID}","result":"rejected","detail":"in maintenance"}}'.encode())
    assert v1 == Ack(ACK_ID, "rejected", "in maintenance")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"{", "bad_json"),
        (b'{"status":"ok"}', "bad_schema"),
        (f'{{"id":"{ACK_ID}","status":"done"}}'.encode(), "bad_schema"),
        (b'{"id":"not-a-uuid","status":"ok"}', "bad_schema"),
        (f'{{"v":1,"id":"{ACK_ID}"}}'.encode(), "bad_schema"),
        (f'{{"v":1,"id":"{ACK_ID}","result":"maybe"}}'.encode(), "bad_schema"),
        (f'{{"id":"{ACK_ID}","status":"ok","detail":5}}'.encode(), "bad_schema"),
        (f'{{"id":"{ACK_ID}","status":"error","detail":"{"x" * 501}"}}'.encode(), "out_of_range"),
    ],
)
def test_ack_junk(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ack(payload)
    assert info.value.reason == reason
