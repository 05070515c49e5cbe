"""A command service in a thread and a scripted device firmware, for the command tests."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import redis
from fleet_harness import spawn_service
from paho.mqtt.enums import CallbackAPIVersion

from commands.issue import CommandRequest, Issued, issue
from commands.model import Action, Rules, State
from commands.service import CommandService
from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget

FAST = Rules(ack_timeout_s=1.0, backoff=1.5, max_sends=3, park_speed_kmh=3.0, park_s=1.5)


def truncate_commands(endpoints: Endpoints) -> None:
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE commands, command_transitions")


@contextmanager
def command_service(
    endpoints: Endpoints, rules: Rules = FAST, consumer: str = "test", publishers: int = 1
) -> Iterator[CommandService]:
    own = endpoints.for_service("commands")  # its own database role, Redis user and broker account
    assert own.mqtt_url, "the stack has no command service account"
    stop = threading.Event()
    service = CommandService(own.mqtt_url, own.redis_url, own.database_url,
                             rules=rules, consumer=consumer, publishers=publishers)  # fmt: skip
    thread = threading.Thread(target=service.run, args=(stop,), name="commands")
    thread.start()
    try:
        assert service.wait_ready(15), "command service did not start"
        time.sleep(0.3)  # subscriptions acknowledged
        yield service
    finally:
        stop.set()
        thread.join(timeout=15)


def send(endpoints: Endpoints, device_id: str, action: Action, rules: Rules = FAST, **kw: object) -> Issued:
    req = CommandRequest(device_id, action, requested_by=str(kw.pop("by", "test")), **kw)  # type: ignore[arg-type]
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            return issue(conn, client, req, rules, datetime.now(UTC))
    finally:
        client.close()


def state_of(endpoints: Endpoints, command_id: str) -> State:
    with psycopg.connect(endpoints.database_url) as conn:
        row = conn.execute("SELECT state FROM commands WHERE id = %s", (command_id,)).fetchone()
    assert row is not None
    return State(row[0])


def path_of(endpoints: Endpoints, command_id: str) -> list[str]:
    with psycopg.connect(endpoints.database_url) as conn:
        rows = conn.execute(
            "SELECT to_state FROM command_transitions WHERE command_id = %s ORDER BY seq", (command_id,)
        ).fetchall()
    return [r[0] for r in rows]


@dataclass
class Firmware:
    """A device as its firmware would behave: acks each command id once (again on a repeat), acts once,
    reports its lock state and speed. `habit`: prompt, silent (never acks), reject."""

    endpoints: Endpoints
    device_id: str
    password: str
    habit: str = "prompt"
    speed_kmh: float = 0.0
    locked: bool = False
    received: list[dict[str, object]] = field(default_factory=list)
    _done: set[str] = field(default_factory=set)
    _client: mqtt.Client | None = None

    def connect(self) -> Firmware:
        target = MqttTarget.parse(self.endpoints.mqtt_url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(self.device_id, self.password)
        client.will_set(f"fleet/{self.device_id}/status", b"offline", qos=1, retain=True)
        subscribed = threading.Event()
        client.on_connect = lambda c, *_a: c.subscribe(f"fleet/{self.device_id}/cmd", qos=1)
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_message = self._on_command
        client.connect(target.host, target.port)
        client.loop_start()
        assert subscribed.wait(10), f"{self.device_id} could not subscribe"
        self._client = client
        client.publish(f"fleet/{self.device_id}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        return self

    def report(self) -> None:
        assert self._client is not None
        body = {"v": 1, "ts": datetime.now(UTC).isoformat(), "lat": 52.52, "lon": 13.40,
                "speed_kmh": self.speed_kmh, "locked": self.locked}  # fmt: skip
        self._client.publish(f"fleet/{self.device_id}/telemetry", orjson.dumps(body), qos=1).wait_for_publish(5)

    def go_offline(self) -> None:
        assert self._client is not None
        self._client.publish(f"fleet/{self.device_id}/status", b"offline", qos=1, retain=True).wait_for_publish(5)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None

    close = go_offline

    def _on_command(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        self.received.append(body)
        if self.habit == "silent":
            return
        cid = body["id"]
        result = "rejected" if self.habit == "reject" else "ok"
        if cid not in self._done and result == "ok" and body["action"] in ("lock", "unlock"):
            self.locked = body["action"] == "lock"
            if self.locked:
                self.speed_kmh = 0.0
        self._done.add(cid)
        ack = {"v": 1, "id": cid, "result": result, "detail": "test firmware"}
        client.publish(f"fleet/{self.device_id}/cmd/ack", orjson.dumps(ack), qos=1)
        body_t = {"v": 1, "ts": datetime.now(UTC).isoformat(), "lat": 52.52, "lon": 13.40,
                  "speed_kmh": self.speed_kmh, "locked": self.locked}  # fmt: skip
        client.publish(f"fleet/{self.device_id}/telemetry", orjson.dumps(body_t), qos=1)


def spawn_commands(endpoints: Endpoints, instance: str, log_dir: Path, rules: Rules = FAST) -> subprocess.Popen[bytes]:
    """`fleet commands serve` as its own process with `rules`, so a test can kill -9 it."""
    rules_env = {
        "FLEET_COMMANDS_ACK_TIMEOUT_S": str(rules.ack_timeout_s), "FLEET_COMMANDS_BACKOFF": str(rules.backoff),
        "FLEET_COMMANDS_MAX_SENDS": str(rules.max_sends), "FLEET_COMMANDS_PARK_S": str(rules.park_s),
    }  # fmt: skip
    return spawn_service("commands", endpoints, instance, log_dir, env=rules_env)


def clear_statuses(endpoints: Endpoints, device_ids: list[str]) -> None:
    """Remove the devices' retained statuses while the gateway still runs and knows them: a retained
    status of a device a later test does not register would reach that test's gateway as a dead letter."""
    target = MqttTarget.parse(endpoints.mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="commands-test-cleaner", protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.connect(target.host, target.port)
    client.loop_start()
    try:
        for info in [client.publish(f"fleet/{d}/status", b"", qos=1, retain=True) for d in device_ids]:
            info.wait_for_publish(10)
        time.sleep(0.5)  # the gateway reads the clearing messages before it stops
    finally:
        client.disconnect()
        client.loop_stop()
