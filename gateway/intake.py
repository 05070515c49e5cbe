"""What the gateway does with a batch of raw messages, as a pure function.

Every message ends in exactly one place: stored records, a dead letter (with its raw bytes and a
reason), a status/ack update, or an explicit "ignored" count. Nothing raises out of here, whatever the
bytes, so one hostile device cannot stop the loop for everyone else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from gateway import decoders
from gateway.records import DeadLetter, DecodeError, RawMessage, Telemetry
from gateway.wire import FORMAT, StreamEntry


@dataclass(frozen=True, slots=True)
class Intake:
    """The gateway's policy: limits, the decoder, and the devices the registry knows."""

    decode: Callable[..., decoders.Decoded]
    max_payload: int
    future_tolerance_s: float
    known: frozenset[str]

    def with_known(self, known: frozenset[str]) -> Intake:
        return dataclasses.replace(self, known=known)


@dataclass(slots=True)
class Outcome:
    messages: Sequence[RawMessage]
    entry: StreamEntry
    status: dict[str, bool] = field(default_factory=dict)
    acks: list[bytes] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def classify(messages: Sequence[RawMessage], intake: Intake, *, now: datetime) -> Outcome:
    records: list[Telemetry] = []
    received: list[datetime] = []
    dead: list[DeadLetter] = []
    outcome = Outcome(messages, StreamEntry(FORMAT, records, received, dead))
    for msg in messages:
        route = decoders.route(msg.topic)
        if route is None:
            dead.append(DeadLetter(msg.topic, msg.payload, "bad_topic", msg.received_at))
            continue
        if route.device_id not in intake.known:
            dead.append(DeadLetter(msg.topic, msg.payload, "unknown_device", msg.received_at, route.device_id))
            continue
        try:
            if route.kind == "status":
                outcome.status[route.device_id] = decoders.decode_status(msg.payload)
            elif route.kind == "cmd_ack":
                ack = decoders.decode_ack(msg.payload)
                outcome.acks.append(orjson.dumps({"device_id": route.device_id, **dataclasses.asdict(ack)}))
            else:
                decoded = intake.decode(
                    msg, now=now, max_payload=intake.max_payload, future_tolerance_s=intake.future_tolerance_s
                )
                if not decoded.records and not decoded.rejects:
                    outcome.ignored.append("nothing_to_store")  # e.g. only GSV or proprietary NMEA lines
                records.extend(decoded.records)
                received.extend([msg.received_at] * len(decoded.records))
                for reject in decoded.rejects:
                    if reject.reason in decoders.IGNORED_REASONS:
                        outcome.ignored.append(reject.reason)
                    else:
                        # Part of a message refused (one bad NMEA line among good ones): keep its bytes.
                        dead.append(
                            DeadLetter(msg.topic, reject.raw, reject.reason, msg.received_at, route.device_id,
                                       reject.detail)
                        )  # fmt: skip
        except DecodeError as exc:
            if exc.reason in decoders.IGNORED_REASONS:
                outcome.ignored.append(exc.reason)
            else:
                dead.append(
                    DeadLetter(msg.topic, msg.payload, exc.reason, msg.received_at, route.device_id, exc.detail)
                )
    return outcome
