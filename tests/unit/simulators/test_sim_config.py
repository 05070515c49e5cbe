"""Run configuration and fleet roster: refused when it cannot run, stable per device, load payloads."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import orjson
import pytest

from kernel.mqtt_codec import count_pubacks, encode_varint
from simulators.config import CommandHabit, SimConfig, SimConfigError, device_ids, report_interval, role
from simulators.encode import Format
from simulators.load import LoadError, _check, _Share, payloads
from simulators.wire import connect_packet, publish_packet


@pytest.mark.parametrize(
    "kwargs",
    [
        {"devices": 0},
        {"rate": 0},
        {"rate": math.inf},
        {"fmt": "xml"},
        {"duration_s": None, "count": None},
        {"duration_s": -1},
        {"count": 0},
        {"offline_share": 0.6, "drop_share": 0.6},
        {"id_prefix": "bad prefix/"},
        {"connect_rate": 0},
    ],
)
def test_configs_that_cannot_run_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(SimConfigError):
        SimConfig(**kwargs)


def test_count_alone_is_a_bound() -> None:
    assert SimConfig(duration_s=None, count=10).count == 10


def test_roles_do_not_depend_on_fleet_size() -> None:
    small, large = (
        SimConfig(devices=20, fmt="mixed", offline_share=0.2),
        SimConfig(devices=9000, fmt="mixed", offline_share=0.2),
    )
    for i in range(20):
        a, b = role(small, i), role(large, i)
        assert (a.profile, a.fmt, a.habit, a.skew_s, a.phase) == (b.profile, b.fmt, b.habit, b.skew_s, b.phase)


def test_mixed_fleet_and_habit_shares() -> None:
    config = SimConfig(devices=4000, fmt="mixed", offline_share=0.1, slow_share=0.1, drop_share=0.05)
    roles = [role(config, i) for i in range(config.devices)]
    formats = Counter(r.fmt for r in roles)
    habits = Counter(r.habit for r in roles)
    assert formats[Format.JSON] / 4000 == pytest.approx(0.5, abs=0.04)
    assert formats[Format.NMEA] / 4000 == pytest.approx(0.25, abs=0.04)
    assert habits[CommandHabit.OFFLINE] / 4000 == pytest.approx(0.1, abs=0.02)
    assert habits[CommandHabit.DROP] / 4000 == pytest.approx(0.05, abs=0.02)
    assert sum(r.profile.maintenance for r in roles) / 4000 == pytest.approx(0.05, abs=0.02)
    assert all(r.peer != r.device_id for r in roles)


def test_owntracks_devices_report_at_most_once_a_second() -> None:
    config = SimConfig(devices=3, rate=5, fmt="owntracks")
    assert report_interval(config, role(config, 0)) == 1.0
    assert report_interval(SimConfig(rate=5), role(SimConfig(rate=5), 0)) == 0.2


def test_device_ids_are_valid_and_stable() -> None:
    assert device_ids(SimConfig(devices=3)) == ["sim-00000", "sim-00001", "sim-00002"]


def share(fmt: str, batch: int = 1) -> _Share:
    return _Share("h", 1, None, None, "c", (0, 3), (25, 30), 0.0, fmt, batch, 1_790_000_000.0, 1)


def test_load_payloads_are_distinct_valid_records() -> None:
    seen = set()
    messages = list(payloads(share("json"), "load-"))
    assert len(messages) == 55
    for topic, payload in messages:
        doc = orjson.loads(payload)
        assert topic == f"fleet/{doc['id']}/telemetry" and doc["v"] == 1
        seen.add((doc["id"], doc["ts"]))
    assert len(seen) == 55


def test_load_batches_carry_the_total() -> None:
    messages = list(payloads(share("json", batch=10), "load-"))
    counts = [len(orjson.loads(p)["records"]) for _, p in messages]
    assert sum(counts) == 55 and max(counts) == 10 and len(messages) == 3 + 3


def test_load_owntracks_and_nmea() -> None:
    ot = [orjson.loads(p) for _, p in payloads(share("owntracks"), "load-")]
    assert len({(d["tid"], d["tst"]) for d in ot}) == 30  # tst one second apart per device
    nmea = [p for _, p in payloads(share("nmea"), "load-")]
    assert all(p.startswith(b"$GPRMC") for p in nmea)


@pytest.mark.parametrize(
    "args", [(0, 0, 1, "json", 1), (10, -1, 1, "json", 1), (10, 0, 1, "xml", 1), (10, 0, 1, "nmea", 5)]
)
def test_load_refuses_bad_arguments(args: tuple[int, float, int, str, int]) -> None:
    with pytest.raises(LoadError):
        _check(*args)


def test_mqtt_packets_are_encoded_as_the_spec_says() -> None:
    assert encode_varint(0) == b"\x00" and encode_varint(127) == b"\x7f" and encode_varint(128) == b"\x80\x01"
    assert encode_varint(16_383) == b"\xff\x7f" and encode_varint(2_097_152) == b"\x80\x80\x80\x01"
    packet = publish_packet("a/b", b"xyz", 10)
    assert packet == b"\x32\x0a\x00\x03a/b\x00\x0axyz"
    connect = connect_packet("c1", "user", "pw", 60)
    assert connect[0] == 0x10 and connect[2:10] == b"\x00\x04MQTT\x04\xc2"


def test_puback_counting_keeps_partial_packets_for_later() -> None:
    data = b"\x40\x02\x00\x01" * 3 + b"\xd0\x00" + b"\x40\x02\x00"
    count, used = count_pubacks(data)
    assert (count, data[used:]) == (3, b"\x40\x02\x00")
    rest = data[used:] + b"\x04"
    count, used = count_pubacks(rest)
    assert (count, rest[used:]) == (1, b"")


@pytest.mark.parametrize("module", ["city", "vehicle", "encode", "faults", "config"])
def test_core_modules_import_no_transport(module: str) -> None:
    code = (
        f"import sys, simulators.{module}; "
        "print(','.join(m for m in ('asyncio', 'aiomqtt', 'paho', 'psycopg', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
