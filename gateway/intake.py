"""What the gateway does with a batch of raw messages, as a pure function of the batch, the policy
and `now` (the dead-letter budget is the one piece of state, kept in the policy across batches).

Every message ends in exactly one place: stored records, a dead letter (with a bounded prefix of its
raw bytes and a reason), a status/ack update, or an explicit "ignored" count. Nothing raises out of
here, whatever the bytes: the size limit holds on every topic, and an exception no decoder should
raise becomes a `decoder_error` dead letter and a warning for the shell to log, so one hostile
device cannot stop the loop for everyone else. Each message leaves at most one dead letter per
reason (`kernel.deadletters`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from gateway import decoders
from gateway.decoders.topics import Route
from kernel.deadletters import DeadLetterBudget, budgeted, fold, letter
from kernel.records import DeadLetter, DecodeError, RawMessage, Telemetry
from kernel.wire import FORMAT, StreamEntry


@dataclass(frozen=True, slots=True)
class Intake:
    """The gateway's policy: limits, the decoder, the devices the registry knows, and the dead-letter
    budget (mutable, and shared by every `with_known` copy, so it lasts across batches)."""

    decode: Callable[..., decoders.Decoded]
    max_payload: int
    future_tolerance_s: float
    known: frozenset[str]
    budget: DeadLetterBudget = field(default_factory=DeadLetterBudget)

    def with_known(self, known: frozenset[str]) -> Intake:
        return dataclasses.replace(self, known=known)


@dataclass(slots=True)
class Outcome:
    messages: Sequence[RawMessage]
    entry: StreamEntry
    status: dict[str, bool] = field(default_factory=dict)
    acks: list[bytes] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    """More counters for `fleet:counters`: `dead_dropped:{reason}`, letters over a device's budget."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(key, text) for the shell's rate-limited log: decoder failures, budgets exceeded."""


def classify(messages: Sequence[RawMessage], intake: Intake, *, now: datetime) -> Outcome:
    records: list[Telemetry] = []
    received: list[datetime] = []
    dead: list[DeadLetter] = []
    outcome = Outcome(messages, StreamEntry(FORMAT, records, received, []))
    for msg in messages:
        if len(msg.payload) > intake.max_payload:  # every topic, before anything reads the bytes
            route = decoders.route(msg.topic)
            detail = f"{len(msg.payload)} bytes > {intake.max_payload}"
            dead.append(letter(msg.topic, msg.payload, "oversize", msg.received_at, route and route.device_id, detail))
            continue
        route = decoders.route(msg.topic)
        if route is None:
            dead.append(letter(msg.topic, msg.payload, "bad_topic", msg.received_at))
            continue
        if route.device_id not in intake.known:
            dead.append(letter(msg.topic, msg.payload, "unknown_device", msg.received_at, route.device_id))
            continue
        try:
            _one(msg, route, intake, now, outcome, dead)
        except DecodeError as exc:
            if exc.reason in decoders.IGNORED_REASONS:
                outcome.ignored.append(exc.reason)
            else:
                dead.append(letter(msg.topic, msg.payload, exc.reason, msg.received_at, route.device_id, exc.detail))
        except Exception as exc:  # a decoder bug must cost one message, never the gateway
            detail = f"{type(exc).__name__}: {exc}"
            dead.append(letter(msg.topic, msg.payload, "decoder_error", msg.received_at, route.device_id, detail))
            outcome.warnings.append(("decoder_error", f"decoder failed on {msg.topic[:120]!r}: {detail[:300]}"))
    kept, dropped, warnings = budgeted(dead, intake.budget, now)
    outcome.entry.dead.extend(kept)
    outcome.counters.update(f"dead_dropped:{d.reason}" for d in dropped)
    outcome.warnings.extend(("dead_letter_budget", text) for text in warnings)
    return outcome


def _one(
    msg: RawMessage, route: Route, intake: Intake, now: datetime, outcome: Outcome, dead: list[DeadLetter]
) -> None:
    """Decode one routed message of a known device into `outcome`; raises `DecodeError` to refuse it whole."""
    if route.kind == "status":
        outcome.status[route.device_id] = decoders.decode_status(msg.payload)
        return
    if route.kind == "cmd_ack":
        ack = decoders.decode_ack(msg.payload)
        outcome.acks.append(orjson.dumps({"device_id": route.device_id, **dataclasses.asdict(ack)}))
        return
    decoded = intake.decode(msg, now=now, max_payload=intake.max_payload, future_tolerance_s=intake.future_tolerance_s)
    if not decoded.records and not decoded.rejects:
        outcome.ignored.append("nothing_to_store")  # e.g. only GSV or proprietary NMEA lines
    outcome.entry.records.extend(decoded.records)
    outcome.entry.received_at.extend([msg.received_at] * len(decoded.records))
    if not decoded.rejects:
        return
    refused = []
    for reject in decoded.rejects:
        if reject.reason in decoders.IGNORED_REASONS:
            outcome.ignored.append(reject.reason)
        else:
            refused.append(reject)
    # Part of a message refused (bad NMEA lines among good ones): one letter per reason, its bytes kept.
    for part in fold(refused):
        dead.append(letter(msg.topic, part.raw, part.reason, msg.received_at, route.device_id, part.detail, part.count))
