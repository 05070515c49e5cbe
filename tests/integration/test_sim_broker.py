"""The simulated fleet against a real Mosquitto: what arrives is what the run's ledger says.

The broker here is a throwaway one with a topic ACL like production's (`fleet/%u/#`), so a device
publishing on another device's topic is really refused. The full path through ingest into the
store is covered by the gateway's own end-to-end tests, which use `SimSummary` as the expectation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import orjson
import pytest

from simulators.config import SimConfig, device_ids
from simulators.faults import FaultConfig
from simulators.fleet import run_fleet
from simulators.load import run_load

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ACL = """\
user observer
topic readwrite #

pattern readwrite fleet/%u/#
pattern readwrite owntracks/%u/#
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed (Debian: apt-get install mosquitto)")
    folder: Path = tmp_path_factory.mktemp("mosquitto")
    port = _free_port()
    (folder / "acl").write_text(ACL)
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", f"acl_file {folder / 'acl'}"]
    lines += ["max_connections -1", "persistence false", "log_dest stderr"]
    if os.geteuid() == 0:
        lines.append("user root")  # the temp folder is private to root
    (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"mosquitto did not start on port {port}: {err[-500:]}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


async def _collect(port: int, seen: list[aiomqtt.Message], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="observer", identifier="observer") as client:
        await client.subscribe("fleet/#", qos=1)
        await client.subscribe("owntracks/#", qos=1)
        ready.set()
        async for message in client.messages:
            seen.append(message)


async def _send_commands(port: int, ids: list[str]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="observer", identifier="commander") as client:
        await asyncio.sleep(1.0)
        for n, device in enumerate(ids):
            cmd = {"v": 1, "id": f"c{n}", "action": "set_speed_limit", "params": {"kmh": 15},
                   "expires": "2100-01-01T00:00:00Z"}  # fmt: skip
            await client.publish(f"fleet/{device}/cmd", orjson.dumps(cmd), qos=1)
        await client.publish(f"fleet/{ids[0]}/cmd", b'{"v": 1, "id": "x1", "action": "self_destruct"}', qos=1)
        expired = {"v": 1, "id": "x2", "action": "lock", "expires": "2001-01-01T00:00:00Z"}
        await client.publish(f"fleet/{ids[1]}/cmd", orjson.dumps(expired), qos=1)


def test_a_short_run_delivers_what_the_ledger_expects(broker: int) -> None:
    # A loop of its own: asyncio.run joins the executor threads aiomqtt connects in.
    asyncio.run(_short_run(broker))


async def _short_run(broker: int) -> None:
    faults = FaultConfig(
        malformed_json=0.03, bad_checksum=0.03, out_of_range=0.03, not_finite=0.03, oversize=0.03,
        id_mismatch=0.03, future_time=0.03, foreign_topic=0.05, duplicate=0.05, out_of_order=0.05,
        offline_batch=0.02, offline_s=(0.5, 1.0), clock_skew=0.3,
    )  # fmt: skip
    config = SimConfig(devices=8, rate=4.0, fmt="mixed", seed=3, duration_s=4.0, faults=faults, ack_delay_s=0.05)
    ids = device_ids(config)
    seen: list[aiomqtt.Message] = []
    ready = asyncio.Event()
    collector = asyncio.create_task(_collect(broker, seen, ready))
    await ready.wait()
    commander = asyncio.create_task(_send_commands(broker, ids))
    summary = await run_fleet(config, mqtt_host="127.0.0.1", mqtt_port=broker, credentials={})
    await commander
    await asyncio.sleep(0.5)
    collector.cancel()
    with pytest.raises(asyncio.CancelledError):
        await collector

    reports = [m for m in seen if not m.topic.matches("fleet/+/status") and not m.topic.matches("fleet/+/cmd/#")]
    assert summary.errors == 0 and summary.peak_connected == 8
    assert summary.messages > 50 and sum(summary.rejects.values()) > 0 and summary.acl_denied > 0
    assert len(reports) == summary.messages - summary.acl_denied  # everything else got through
    for message in reports:  # and nothing got through on a stranger's topic
        owner = str(message.topic).split("/")[1]
        if message.topic.matches("fleet/+/telemetry") and message.payload[:1] == b"{":
            doc = orjson.loads(message.payload) if _valid(message.payload) else {}
            assert doc.get("id") in (None, owner) or summary.rejects.get("id_mismatch")

    acks = {orjson.loads(m.payload)["id"]: orjson.loads(m.payload) for m in seen if m.topic.matches("fleet/+/cmd/ack")}
    assert acks["x1"]["result"] == "rejected" and acks["x2"] == {"v": 1, "id": "x2", "result": "rejected",
                                                                 "detail": "expired"}  # fmt: skip
    assert all(acks[f"c{n}"]["result"] == "ok" for n in range(len(ids)))
    assert summary.acks == len(acks) == len(ids) + 2

    last_status = {str(m.topic).split("/")[1]: m.payload for m in seen if m.topic.matches("fleet/+/status")}
    assert last_status == dict.fromkeys(ids, b"offline")


def _valid(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


def test_count_bound_stops_the_run(broker: int) -> None:
    config = SimConfig(devices=5, rate=10.0, fmt="json", duration_s=30.0, count=40, id_prefix="cnt-")
    started = time.monotonic()
    summary = asyncio.run(run_fleet(config, mqtt_host="127.0.0.1", mqtt_port=broker, credentials={}))
    assert summary.messages == 40 and summary.stored_records == 40
    assert time.monotonic() - started < 10


def test_load_mode_publishes_the_whole_total(broker: int) -> None:
    summary = run_load("127.0.0.1", broker, "observer", None, total=5000, rate=0, devices=10, fmt="json", batch=10)
    assert (summary.records, summary.messages, summary.acked) == (5000, 500, 500)
    paced = run_load("127.0.0.1", broker, "observer", None, total=400, rate=400, devices=4, fmt="nmea")
    assert paced.acked == 400 and 0.7 < paced.elapsed_s < 1.5
