"""Status (`fleet/{id}/status`) and command acknowledgements (`fleet/{id}/cmd/ack`).

Neither is telemetry, so they have their own small decoders; both raise `DecodeError` on junk.
The gateway checks their size like every other topic's, and an ack's JSON is bounded in depth like
telemetry's (`jsonwire.decode_struct`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from gateway.decoders import checks
from gateway.decoders.jsonwire import decode_struct
from kernel.records import DecodeError

AckStatus = Literal["ok", "rejected", "error", "unsupported"]
"""`result` of the v1 ack (docs/protocol.md): ok, rejected (refused) or error (tried and failed).
`unsupported` is the older firmware's word for a refusal, read as `rejected` by the command service."""
MAX_DETAIL = 500

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_STATUS = {b"online": True, b"offline": False}


def decode_status(payload: bytes) -> bool:
    """`online` -> True, `offline` -> False. The broker publishes the device's Last Will
    (`offline`) for it; an empty payload is someone clearing the retained status."""
    text = payload.strip()
    if not text:
        raise DecodeError("empty", "empty status (retained status cleared)")
    online = _STATUS.get(text)
    if online is None:
        raise DecodeError("bad_schema", f"status must be 'online' or 'offline', got {text[:40]!r}")
    return online


@dataclass(frozen=True, slots=True)
class Ack:
    """A device's answer to command `id`."""

    id: str
    status: AckStatus
    detail: str = ""


class _AckWire(msgspec.Struct, frozen=True):
    id: str
    result: AckStatus | None = None  # v1 ack
    status: AckStatus | None = None  # the same, as firmware written before v1 says it
    detail: str | None = None


_ack = msgspec.json.Decoder(_AckWire)


def decode_ack(payload: bytes) -> Ack:
    if not payload.strip():
        raise DecodeError("empty", "empty ack")
    wire = decode_struct(_ack, payload)
    if _UUID.fullmatch(wire.id) is None:
        raise DecodeError("bad_schema", f"ack id is not a UUID: {wire.id[:40]!r}")
    status = wire.result or wire.status
    if status is None:
        raise DecodeError("bad_schema", "ack has no result")
    detail = wire.detail or ""
    if len(detail) > MAX_DETAIL:
        raise DecodeError("out_of_range", f"detail longer than {MAX_DETAIL} characters")
    checks.text("detail", detail, free_text=True)  # stored later; a human message may span lines
    return Ack(wire.id, status, detail)
