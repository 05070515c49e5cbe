"""The command wire (docs/protocol.md), both ways, as pure functions.

Out: `fleet/{id}/cmd`, JSON `{"v": 1, "id", "action", "params", "expires"}` at QoS 1 with MQTT 5's
Message Expiry Interval set to the seconds left, so the broker drops a command that outlives its
time to live in an offline device's session too. In: the gateway decodes `fleet/{id}/cmd/ack` and
writes `{"device_id", "id", "status", "detail"}` into the stream `fleet:cmd-acks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import orjson

from commands.lifecycle import AckResult
from commands.model import Command
from kernel import keys

ACKS_STREAM = keys.CMD_ACKS_STREAM
VERSION = 1
_RESULTS: dict[str, AckResult] = {"ok": "ok", "rejected": "rejected", "unsupported": "rejected", "error": "error"}


def command_topic(device_id: str) -> str:
    return f"fleet/{device_id}/cmd"


def encode_command(command: Command) -> bytes:
    body = {
        "v": VERSION,
        "id": command.id,
        "action": str(command.action),
        "params": dict(command.params),
        "expires": command.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return orjson.dumps(body)


def expiry_interval_s(command: Command, now: datetime) -> int:
    """Whole seconds left, rounded up (a broker counts in seconds); at least 1."""
    return max(1, math.ceil((command.expires_at - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class AckEntry:
    device_id: str
    command_id: str
    result: AckResult
    detail: str


class BadAck(ValueError):
    """A stream entry that is not an ack the gateway would write; dead-lettered by the service."""


def decode_ack_entry(fields: dict[bytes, bytes]) -> AckEntry:
    try:
        body = orjson.loads(fields[b"a"])
        result = _RESULTS[body["status"]]
        device_id, command_id, detail = body["device_id"], body["id"], body.get("detail") or ""
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadAck(f"not an ack entry: {exc!r}"[:200]) from None
    if not all(isinstance(x, str) for x in (device_id, command_id, detail)):
        raise BadAck("ack fields must be strings")
    return AckEntry(device_id, command_id.lower(), result, detail)
