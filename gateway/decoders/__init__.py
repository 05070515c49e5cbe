"""Device payload decoders: pure functions from one MQTT message to telemetry records.

The gateway's interface:

- `route(topic) -> Route | None` names the decoder (`kind`) and the device (`device_id`, taken from
  the topic, never from the payload). None means the topic is not part of protocol v1.
- `decode(msg, *, now, max_payload=16384, future_tolerance_s=300.0) -> Decoded` for the telemetry
  kinds (`telemetry`, `nmea`, `owntracks`). It raises `DecodeError` when the message as a whole is
  refused (oversize, bad topic, bad JSON, a bad single record, ...) and raises nothing else, whatever
  the bytes. When a message is readable but parts of it are not (an NMEA line with a bad checksum,
  an epoch without a fix, one bad record in a JSON batch), it returns `Decoded(records, rejects)`:
  store the records, dead-letter each `Reject` with its own raw bytes.
- `decode_status(payload) -> bool` and `decode_ack(payload) -> Ack` for the two control kinds.
- What the database cannot hold is refused before a record exists: control characters in a stored
  string (`bad_string`), numbers outside `checks.BOUNDS` (`out_of_range`), and JSON nested deeper
  than `jsonwire.MAX_DEPTH` (`too_deep`, checked on the bytes before any parser recurses).
- `IGNORED_REASONS`: reasons that are normal traffic, to be counted and not dead-lettered
  (`not_a_location`: OwnTracks lwt/transition/waypoint...; `no_fix`: a receiver without a fix yet,
  which an NMEA tracker indoors reports every second).

`now` is the server clock (aware, UTC); it bounds device times and dates NMEA epochs that carry no
date. Everything here is pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from datetime import datetime

from gateway.decoders.checks import FUTURE_TOLERANCE_S
from gateway.decoders.control import Ack, decode_ack, decode_status
from gateway.decoders.json_v1 import decode_json
from gateway.decoders.nmea import decode_nmea
from gateway.decoders.owntracks import decode_owntracks
from gateway.decoders.results import Decoded
from gateway.decoders.topics import Route, is_device_id, route
from kernel.records import DecodeError, RawMessage, Reject

__all__ = [
    "IGNORED_REASONS",
    "MAX_PAYLOAD",
    "REASONS",
    "Ack",
    "DecodeError",
    "Decoded",
    "Reject",
    "Route",
    "decode",
    "decode_ack",
    "decode_status",
    "is_device_id",
    "route",
]

MAX_PAYLOAD = 16 * 1024

REASONS = frozenset(
    {
        "oversize",
        "bad_topic",
        "bad_json",
        "bad_schema",
        "bad_version",
        "id_mismatch",
        "out_of_range",
        "not_finite",
        "future_time",
        "bad_time",
        "bad_checksum",
        "no_fix",
        "simulated_fix",
        "placeholder_fix",
        "empty",
        "too_many_records",
        "not_a_location",
        "bad_string",
        "too_deep",
    }
)
"""Every reason a decoder can give; stable, used as dead-letter reasons and counter labels."""

IGNORED_REASONS = frozenset({"not_a_location", "no_fix"})

_DECODERS = {"telemetry": decode_json, "nmea": decode_nmea, "owntracks": decode_owntracks}


def decode(
    msg: RawMessage,
    *,
    now: datetime,
    max_payload: int = MAX_PAYLOAD,
    future_tolerance_s: float = FUTURE_TOLERANCE_S,
) -> Decoded:
    """Decode one telemetry message. Size is checked before anything touches the bytes."""
    if len(msg.payload) > max_payload:
        raise DecodeError("oversize", f"{len(msg.payload)} bytes > {max_payload}")
    where = route(msg.topic)
    if where is None:
        raise DecodeError("bad_topic", f"not a protocol v1 topic: {msg.topic[:120]!r}")
    decoder = _DECODERS.get(where.kind)
    if decoder is None:
        raise DecodeError("bad_topic", f"{where.kind} topics are not telemetry: use decode_{where.kind}")
    if not msg.payload or msg.payload.isspace():
        raise DecodeError("empty", "empty payload")
    return decoder(msg.payload, where.device_id, now=now, tolerance_s=future_tolerance_s)
