"""The command benchmark's device farm: firmware for every simulated device, in a few processes.

Each process holds one receiving session on the shared subscription `$share/bench-farm/fleet/+/cmd`
(the gateway's bulk session, `kernel.mqtt_session`: many messages per read, the PUBACKs of a batch
in one write) and one publishing connection (`commands.publisher`) for the answers. Per command, as
firmware would: the time it first saw the id, then the ack (every time, a repeat acked again), and on
the first sight of a lock or unlock the report with the new `locked` state (acted on once).

Why not paho: with paho a farm process spent more time on each command than the command service did
(`docs/performance.md`); real devices each have their own CPU, so the farm must not be what the
benchmark measures.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from commands.publisher import CommandPublisher, Outgoing
from kernel.mqtt_session import MqttSession, SessionError
from kernel.settings import MqttTarget

FILTER = "$share/bench-farm/fleet/+/cmd"
BATCH = 5_000


def report(device: str, locked: bool) -> Outgoing:
    """A standing JSON v1 record with the lock state, as the firmware reports it."""
    body = {"v": 1, "ts": datetime.now(UTC).isoformat(), "lat": 52.52, "lon": 13.4, "speed_kmh": 0.0,
            "locked": locked}  # fmt: skip
    return Outgoing(device, f"fleet/{device}/telemetry", orjson.dumps(body), 0)


def answer(topic: str, payload: bytes, first_seen: dict[str, float], now: float) -> list[Outgoing]:
    """What the firmware sends for one command: the ack, and the report when it first acts."""
    device = topic.split("/")[1]
    command = orjson.loads(payload)
    command_id = command["id"]
    first = command_id not in first_seen
    if first:
        first_seen[command_id] = now
    ack = {"v": 1, "id": command_id, "result": "ok", "detail": "done"}
    out = [Outgoing(device, f"fleet/{device}/cmd/ack", orjson.dumps(ack), 0)]
    if first and command["action"] in ("lock", "unlock"):
        out.append(report(device, command["action"] == "lock"))
    return out


def farm_main(mqtt_url: str, index: int, ready: Any, stop: Any, out: Any) -> None:
    """One farm process: answer every command until `stop`, then put (first seen by id, received)."""
    target = MqttTarget.parse(mqtt_url)
    session = MqttSession(target.host, target.port, f"bench-farm-{index}", target.username, target.password)
    publisher = CommandPublisher(target, f"bench-farm-{index}")
    session.connect([(FILTER, 1)])
    publisher.open()
    first_seen: dict[str, float] = {}
    received = 0
    ready.set()
    try:
        while not stop.is_set():
            inbound = session.receive(0.2, BATCH)
            if not inbound.topics:
                continue
            now = time.time()
            received += len(inbound)
            answers: list[Outgoing] = []
            for topic, payload in zip(inbound.topics, inbound.payloads, strict=True):
                answers += answer(topic, payload, first_seen, now)
            publisher.publish(answers)
            session.ack(inbound.mids)
    except SessionError as exc:
        print(f"farm {index}: {exc}")
    finally:
        out.put((first_seen, received))
        session.end()
        publisher.close()
