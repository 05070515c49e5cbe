"""The gateway on the real broker: a device is known from the moment its registration returns, and no
exception out of a decoder ends the gateway's loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fleet_harness import device_client, publish_all, register, scalar, services, wait_for

import gateway.service
from gateway import decoders
from kernel.endpoints import Endpoints
from kernel.records import RawMessage

pytestmark = pytest.mark.integration

DEVICES = 40


def _report(t: datetime, **extra: object) -> bytes:
    return orjson.dumps({"v": 1, "ts": t.isoformat(), "lat": 52.5, "lon": 13.4, **extra})


def test_a_device_publishing_right_after_registration_is_not_refused(
    clean: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached device set is not reloaded during the test (the refresh interval is an hour), so
    every report here is admitted by the lookup of the batch's misses, or dead-lettered without it."""
    monkeypatch.setattr(gateway.service, "REGISTRY_REFRESH_S", 3600.0)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ids = [f"race-{i}" for i in range(DEVICES)]
    with services(clean) as running:
        for device_id in ids:
            creds = register(clean, [device_id])  # returns once the device is registered everywhere
            with device_client(clean, device_id, creds[device_id]) as client:
                publish_all(client, [(f"fleet/{device_id}/telemetry", _report(start + timedelta(seconds=k)))
                                     for k in range(3)])  # fmt: skip
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", "race-%")
                 == 3 * DEVICES, 20, "every report stored")  # fmt: skip
        assert running.gateway.stats.dead_letters["unknown_device"] == 0
    assert scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE device_id LIKE %s", "race-%") == 0


def test_a_decoder_that_raises_anything_does_not_stop_the_gateway(clean: Endpoints) -> None:
    """A decoder bug (here RecursionError, as deep JSON once raised) costs its message a dead letter;
    the good messages of the same batch and later ones are stored, and the loop goes on."""
    calls = threading.Event()

    def fragile(msg: RawMessage, **kwargs: Any) -> decoders.Decoded:
        if b"boom" in msg.payload:
            calls.set()
            raise RecursionError("maximum recursion depth exceeded")
        return decoders.decode(msg, **kwargs)

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    creds = register(clean, ["rz-1"])
    with services(clean, decode=fragile) as running, device_client(clean, "rz-1", creds["rz-1"]) as client:
        messages = [("fleet/rz-1/telemetry", _report(start + timedelta(seconds=k))) for k in range(20)]
        messages.insert(10, ("fleet/rz-1/telemetry", _report(start, note="boom")))
        publish_all(client, messages)
        wait_for(calls.is_set, 10, "the bad message decoded")
        publish_all(client, [("fleet/rz-1/telemetry", _report(start + timedelta(seconds=100)))])
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM telemetry WHERE device_id = 'rz-1'") == 21,
                 15, "the good reports stored")  # fmt: skip
        wait_for(lambda: scalar(clean.database_url, "SELECT count(*) FROM dead_letters WHERE device_id = 'rz-1'"
                                " AND reason = 'decoder_error'") == 1, 10, "one dead letter")  # fmt: skip
        assert running.gateway.wait_connected(0)
