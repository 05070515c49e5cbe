"""Process records, spawning and stopping, on real short-lived processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from kernel.mqtt_codec import decode_varint
from localstack import procs
from localstack.mosquitto import connect_packet
from localstack.mosquitto import render_config as mosquitto_config
from localstack.postgres import render_config as postgres_config
from localstack.redis_acl import acl_config
from localstack.redis_server import render_config as redis_config

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def test_a_record_survives_a_round_trip(tmp_path: Path) -> None:
    record = procs.ProcessRecord(pid=123, start_time=456, port=789)
    record.save(tmp_path / "x.json")
    assert procs.ProcessRecord.load(tmp_path / "x.json") == record
    assert procs.ProcessRecord.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert procs.ProcessRecord.load(tmp_path / "bad.json") is None


def test_a_recycled_pid_is_not_our_server() -> None:
    mine = procs.ProcessRecord(os.getpid(), 0, 1)
    assert not procs.is_running(mine)
    assert not procs.is_running(None)


def test_spawned_process_is_found_then_stopped(tmp_path: Path) -> None:
    record = procs.spawn(["sleep", "60"], cwd=tmp_path, log_file=tmp_path / "log", account=None, port=1, nofile=None)
    assert procs.is_running(record)
    assert os.getsid(record.pid) == record.pid  # its own session: Ctrl-C on the caller does not reach it
    assert procs.stop(record, signal.SIGTERM)
    assert not procs.is_running(record)


def test_a_server_that_ignores_the_stop_signal_is_killed(tmp_path: Path) -> None:
    record = procs.spawn(
        [sys.executable, "-c", IGNORE_TERM], cwd=tmp_path, log_file=tmp_path / "log", account=None, port=1
    )
    assert procs.wait_until(lambda: b"ready" in (tmp_path / "log").read_bytes(), 10)
    started = time.monotonic()
    assert not procs.stop(record, signal.SIGTERM, timeout_s=0.5)
    assert not procs.is_running(record)
    assert time.monotonic() - started < 5


def test_descendants_include_grandchildren(tmp_path: Path) -> None:
    record = procs.spawn(
        ["sh", "-c", "sleep 60 & sleep 60 & wait"], cwd=tmp_path, log_file=tmp_path / "log", account=None, port=1
    )
    try:
        assert procs.wait_until(lambda: len(procs.descendants(record.pid)) == 2, 5)
        children = procs.descendants(record.pid)
    finally:
        procs.stop(record, signal.SIGKILL)
    for pid in children:
        os.kill(pid, signal.SIGKILL)


def test_the_open_files_limit_is_readable() -> None:
    assert (procs.nofile_limit(os.getpid()) or 0) > 0


def test_configs_listen_on_loopback_only() -> None:
    mqtt = mosquitto_config(18831, "/p.so", "/d.json", "/data")
    assert "listener 18831 127.0.0.1" in mqtt and "allow_anonymous false" in mqtt
    assert "max_connections -1" in mqtt and "persistence true" in mqtt
    pg = postgres_config(15433)
    assert "listen_addresses = '127.0.0.1'" in pg and "shared_preload_libraries = 'timescaledb'" in pg
    assert "timescaledb.telemetry_level = off" in pg
    redis = redis_config(16380, acl_config("admin-pw", {"ingest": "ingest-pw"}), "/data")
    assert "bind 127.0.0.1" in redis and "appendfsync everysec" in redis
    assert "user default reset on #" in redis and "user fleet-ingest reset on #" in redis
    assert "requirepass" not in redis and "admin-pw" not in redis and "ingest-pw" not in redis


def test_connect_packet_is_well_formed_mqtt_311() -> None:
    packet = connect_packet("c", "u", "p")
    assert packet[0] == 0x10
    assert packet[1] == len(packet) - 2
    assert packet[2:10] == b"\x00\x04MQTT\x04\xc2"
    assert packet.endswith(b"\x00\x01c\x00\x01u\x00\x01p")
    long = connect_packet("c", "u", "p" * 200)
    assert decode_varint(long, 1) == (len(long) - 3, 3)
