"""The stack manager against the real servers: start, reuse, stop, persistence, and the broker's device security.

This module runs its own stack in a temporary state folder on free ports (it has to stop and restart
it), separate from the session's servers.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from kernel.services import REDIS_SERVICES
from kernel.settings import MqttTarget
from localstack import Ports, Stack, StackError, StackUrls, ensure_installed, free_ports
from localstack.mosquitto import OPEN_FILES
from localstack.procs import descendants, nofile_limit
from provisioning.broker_admin import BrokerAdmin, BrokerAdminError
from provisioning.credentials import DeviceCredentials

pytestmark = pytest.mark.integration
WAIT_S = 5.0


@dataclass
class Probe:
    """A paho client that records what happens to it, for asserting on the broker's decisions."""

    client: mqtt.Client
    connack: object = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    granted: dict[int, list[bool]] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def subscribe(self, topic: str) -> bool:
        _, mid = self.client.subscribe(topic, qos=1)
        assert wait(lambda: mid in self.granted), f"no SUBACK for {topic}"
        return all(self.granted[mid])

    def received(self, topic: str) -> list[bytes]:
        return [payload for t, payload in list(self.messages) if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait(check, timeout_s: float = WAIT_S) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def connect(url: str, username: str | None, password: str | None, client_id: str | None = None) -> Probe:
    """Connect (MQTT 5) and wait for the CONNACK; `probe.connected` says whether it was accepted."""
    target = MqttTarget.parse(url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5
    )
    probe = Probe(client)
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()

    def on_connect(c, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        probe.connack = reason
        if not reason.is_failure:
            probe.connected.set()
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: probe.disconnected.set()
    client.on_subscribe = lambda c, u, mid, reasons, p: probe.granted.__setitem__(
        mid, [not r.is_failure for r in reasons]
    )
    client.on_message = lambda c, u, m: probe.messages.append((m.topic, m.payload))
    client.connect(target.host, target.port)
    client.loop_start()
    assert answered.wait(WAIT_S) or probe.disconnected.wait(0.1), "broker did not answer CONNECT"
    if not probe.connected.is_set():
        client.loop_stop()
    return probe


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ensure_installed(log=lambda _msg: None)
    own = Stack(tmp_path_factory.mktemp("own-stack") / "state", free_ports())
    try:
        own.up()
        yield own
    finally:
        own.down()


@pytest.fixture
def urls(stack: Stack) -> StackUrls:
    return stack.up()


@pytest.fixture
def admin(urls: StackUrls) -> Iterator[BrokerAdmin]:
    with BrokerAdmin(urls.mqtt_admin_url) as broker:
        yield broker


@pytest.fixture
def devices(admin: BrokerAdmin) -> dict[str, str]:
    """Two freshly registered devices, A and B: id -> password."""
    ids = [f"bike-{secrets.token_hex(3)}" for _ in range(2)]
    creds = {device_id: secrets.token_urlsafe(12) for device_id in ids}
    admin.add_devices(DeviceCredentials(i, p) for i, p in creds.items())
    return creds


@pytest.fixture
def service(urls: StackUrls) -> Iterator[Probe]:
    target = MqttTarget.parse(urls.mqtt_url)
    probe = connect(urls.mqtt_url, target.username, target.password)
    assert probe.connected.is_set(), probe.connack
    yield probe
    probe.close()


# ---------------------------------------------------------------- the servers


def test_every_server_answers_a_real_request(stack: Stack, urls: StackUrls) -> None:
    with psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("timescaledb",)
    client = redis.Redis.from_url(urls.redis_url)
    try:
        assert client.ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()
    for url in (urls.mqtt_url, urls.mqtt_commands_url):
        target = MqttTarget.parse(url)
        probe = connect(url, target.username, target.password)
        assert probe.connected.is_set(), (url, probe.connack)
        probe.close()
    limit = nofile_limit(stack.pids()["mqtt"])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limit is not None and limit >= min(OPEN_FILES, hard)  # above the hard limit only with CAP_SYS_RESOURCE


def test_timescaledb_creates_hypertables(urls: StackUrls) -> None:
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS stack_check")
        conn.execute("CREATE DATABASE stack_check")
    scratch = urls.database_url.rsplit("/", 1)[0] + "/stack_check"
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")
        conn.execute("CREATE TABLE readings (time timestamptz NOT NULL, device text, v double precision)")
        conn.execute("SELECT create_hypertable('readings', 'time')")
        conn.execute("INSERT INTO readings SELECT now() - i * interval '1 hour', 'b', i FROM generate_series(1, 100) i")
        chunks = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()
        assert chunks is not None and chunks[0] >= 1
        assert conn.execute("SHOW timescaledb.telemetry_level").fetchone() == ("off",)


def test_up_again_reuses_the_running_servers(stack: Stack, urls: StackUrls) -> None:
    before = stack.pids()
    started = time.monotonic()
    again = Stack(stack.state_dir, stack.ports).up()
    assert time.monotonic() - started < 2.0
    assert again == urls
    assert stack.pids() == before and len(before) == 3


def test_a_port_held_by_another_program_is_a_clear_error(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        taken = holder.getsockname()[1]
        spare = free_ports()
        other = Stack(tmp_path / "state", Ports(mqtt=spare.mqtt, postgres=taken, redis=spare.redis, mqtts=spare.mqtts))
        with pytest.raises(StackError, match=f"127.0.0.1:{taken} is taken"):
            other.up()
        assert not any(s.running for s in other.status().values())
    finally:
        holder.close()


# ---------------------------------------------------------------- broker accounts and device security


def test_anonymous_and_wrong_passwords_are_refused(urls: StackUrls) -> None:
    assert not connect(urls.mqtt_url, None, None).connected.is_set()
    assert not connect(urls.mqtt_url, "fleet-service", "wrong").connected.is_set()


def test_service_reads_through_a_shared_subscription(urls: StackUrls, devices: dict[str, str]) -> None:
    a = next(iter(devices))
    target = MqttTarget.parse(urls.mqtt_url)
    gateway = connect(urls.mqtt_url, target.username, target.password)
    device = connect(urls.mqtt_url, a, devices[a], client_id=a)
    try:
        assert gateway.subscribe("$share/gw/fleet/+/telemetry")
        device.client.publish(f"fleet/{a}/telemetry", b"{}", qos=1)
        assert wait(lambda: gateway.received(f"fleet/{a}/telemetry") == [b"{}"])
    finally:
        device.close()
        gateway.close()


def test_a_device_can_publish_only_as_itself(urls: StackUrls, devices: dict[str, str], service: Probe) -> None:
    a, b = devices
    assert service.subscribe("fleet/#") and service.subscribe("owntracks/#")
    device = connect(urls.mqtt_url, a, devices[a], client_id=a)
    try:
        for topic in (f"fleet/{b}/telemetry", f"fleet/{b}/status", f"owntracks/{b}/phone", f"fleet/{a}/cmd"):
            device.client.publish(topic, b"forged", qos=1)
        for suffix in ("nmea", "status", "cmd/ack", "telemetry"):  # telemetry last: it marks the end
            device.client.publish(f"fleet/{a}/{suffix}", b"own", qos=1)
        device.client.publish(f"owntracks/{a}/phone", b"own", qos=1)
        assert wait(lambda: service.received(f"owntracks/{a}/phone") == [b"own"])
        assert not [t for t, payload in service.messages if payload == b"forged"]
        assert {t for t, _ in service.messages} == {
            f"fleet/{a}/{s}" for s in ("nmea", "status", "cmd/ack", "telemetry")
        } | {f"owntracks/{a}/phone"}
    finally:
        device.close()


def test_a_device_reads_only_its_own_commands(urls: StackUrls, devices: dict[str, str], service: Probe) -> None:
    a, b = devices
    device = connect(urls.mqtt_url, a, devices[a], client_id=a)
    try:
        assert not device.subscribe(f"fleet/{b}/cmd")
        assert not device.subscribe("fleet/#")
        assert not device.subscribe("fleet/+/cmd")
        assert device.subscribe(f"fleet/{a}/cmd")
        service.client.publish(f"fleet/{b}/cmd", b"for-b", qos=1)
        service.client.publish(f"fleet/{a}/cmd", b"for-a", qos=1)
        assert wait(lambda: device.received(f"fleet/{a}/cmd") == [b"for-a"])
        assert [t for t, _ in device.messages] == [f"fleet/{a}/cmd"]
    finally:
        device.close()


def test_a_device_cannot_use_another_devices_client_id(urls: StackUrls, devices: dict[str, str]) -> None:
    a, b = devices
    assert not connect(urls.mqtt_url, a, devices[a], client_id=b).connected.is_set()
    assert not connect(urls.mqtt_url, a, devices[b], client_id=a).connected.is_set()


def test_disable_enable_and_delete_take_effect_at_once(
    stack: Stack, urls: StackUrls, admin: BrokerAdmin, devices: dict[str, str]
) -> None:
    a = next(iter(devices))
    broker_pid = stack.pids()["mqtt"]
    online = connect(urls.mqtt_url, a, devices[a], client_id=a)
    assert online.connected.is_set()
    admin.disable_device(a)
    assert online.disconnected.wait(WAIT_S), "a disabled device stays connected"
    online.close()
    assert not connect(urls.mqtt_url, a, devices[a], client_id=a).connected.is_set()
    admin.enable_device(a)
    again = connect(urls.mqtt_url, a, devices[a], client_id=a)
    assert again.connected.is_set()
    admin.delete_device(a)
    assert again.disconnected.wait(WAIT_S), "a deleted device stays connected"
    again.close()
    assert not connect(urls.mqtt_url, a, devices[a], client_id=a).connected.is_set()
    assert admin.get_client(a) is None
    admin.delete_device(a)  # already gone: no error
    with pytest.raises(BrokerAdminError, match="not found"):
        admin.enable_device(a)
    assert stack.pids()["mqtt"] == broker_pid  # all of it without restarting the broker


def test_registering_again_changes_the_password(urls: StackUrls, admin: BrokerAdmin, devices: dict[str, str]) -> None:
    a = next(iter(devices))
    admin.disable_device(a)
    admin.add_devices([(a, "second-password")])
    assert not connect(urls.mqtt_url, a, devices[a], client_id=a).connected.is_set()
    probe = connect(urls.mqtt_url, a, "second-password", client_id=a)
    assert probe.connected.is_set()
    probe.close()


def test_service_accounts_and_bad_ids_cannot_be_registered(admin: BrokerAdmin) -> None:
    with pytest.raises(BrokerAdminError, match="service account"):
        admin.add_device("fleet-admin", "x")
    with pytest.raises(BrokerAdminError, match="device id"):
        admin.add_device("a/b", "x")
    with pytest.raises(BrokerAdminError, match="device id"):
        admin.add_device("#", "x")


def test_bulk_registration_through_the_account_file(stack: Stack, urls: StackUrls) -> None:
    ids = [f"sim-{secrets.token_hex(2)}-{i}" for i in range(2000)]
    started = time.monotonic()
    assert stack.register_devices(DeviceCredentials(i, f"pw-{i}") for i in ids) == 2000
    assert time.monotonic() - started < 15
    last = ids[-1]
    probe = connect(urls.mqtt_url, last, f"pw-{last}", client_id=last)
    assert probe.connected.is_set()
    probe.close()
    with BrokerAdmin(urls.mqtt_admin_url) as admin:
        admin.disable_device(ids[0])  # registered offline, managed online like any other
        assert admin.get_client(ids[0])["disabled"] is True  # type: ignore[index]


# ---------------------------------------------------------------- secrets


def test_stack_up_prints_no_password_and_says_where_they_are(stack: Stack) -> None:
    """`fleet stack up` against this module's state folder: it finds the servers running, applies the
    schema and lists the accounts, every password redacted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {"FLEET_MQTT_PORT": str(stack.ports.mqtt), "FLEET_POSTGRES_PORT": str(stack.ports.postgres),
            "FLEET_REDIS_PORT": str(stack.ports.redis), "FLEET_MQTTS_PORT": str(stack.ports.mqtts)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "stack", "up", "--state-dir", str(stack.state_dir)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    kept = json.loads(stack.credentials_file.read_text())
    secrets_kept = [v for v in kept.values() if isinstance(v, str)]
    secrets_kept += [v for group in kept.values() if isinstance(group, dict) for v in group.values()]
    assert len(secrets_kept) >= 14
    assert not [s for s in secrets_kept if s in output]
    assert str(stack.credentials_file) in output.replace("\n", "")
    assert "fleet_ingest:***@" in output and "fleet-api:***@" in output


def test_secret_files_are_private_and_redis_keeps_no_password(stack: Stack, urls: StackUrls) -> None:
    private = [
        stack.credentials_file,
        stack.state_dir / "redis" / "redis.conf",
        stack.state_dir / "mosquitto" / "dynamic-security.json",
        stack.state_dir / "postgres" / "data" / "fleet.conf",
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    redis_conf = (stack.state_dir / "redis" / "redis.conf").read_text()
    kept = json.loads(stack.credentials_file.read_text())
    assert kept["redis"] not in redis_conf
    assert not [pw for pw in kept["redis_users"].values() if pw in redis_conf]
    assert "requirepass" not in redis_conf


def test_each_service_account_logs_in_and_the_owner_is_not_theirs(urls: StackUrls) -> None:
    for name, own in urls.services.items():
        if own.database_url:
            with psycopg.connect(own.database_url) as conn:
                row = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
                assert row.fetchone() == (f"fleet_{name}", False)
        if name not in REDIS_SERVICES:
            assert own.redis_url is None, f"{name} keeps no Redis connection and has no Redis account"
            continue
        client = redis.Redis.from_url(own.redis_url or "")
        try:
            assert client.ping()
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.flushall()
        finally:
            client.close()


# ---------------------------------------------------------------- stopping


def test_down_leaves_no_process_and_up_keeps_the_data(stack: Stack, urls: StackUrls, admin: BrokerAdmin) -> None:
    with psycopg.connect(urls.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
    client = redis.Redis.from_url(urls.redis_url)
    client.xadd("kept-stream", {"k": "v"})
    client.close()
    admin.add_device("kept-device", "kept-password")
    target = MqttTarget.parse(urls.mqtt_url)
    publisher = connect(urls.mqtt_url, target.username, target.password)
    publisher.client.publish("fleet/kept-device/cmd", b"retained", qos=1, retain=True).wait_for_publish(WAIT_S)
    publisher.close()
    admin.close()

    pids = stack.pids()
    workers = [pid for leader in pids.values() for pid in descendants(leader)]
    assert len(workers) >= 4  # PostgreSQL's checkpointer, writers, launchers...
    # stopped from another process, as `fleet stack down` would
    code = f"from pathlib import Path; from localstack import Stack; Stack(Path({str(stack.state_dir)!r})).down()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert not any(s.running for s in stack.status().values())
    assert not [pid for pid in [*pids.values(), *workers] if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]

    again = stack.up()
    assert again == urls
    with psycopg.connect(again.database_url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("survives",)]
    client = redis.Redis.from_url(again.redis_url)
    assert client.xlen("kept-stream") == 1
    client.close()
    device = connect(again.mqtt_url, "kept-device", "kept-password", client_id="kept-device")
    try:
        assert device.connected.is_set()
        assert device.subscribe("fleet/kept-device/cmd")
        assert wait(lambda: device.received("fleet/kept-device/cmd") == [b"retained"])
    finally:
        device.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
