"""The intake's classification with a guard around it, so a decoder bug cannot stop the gateway.

`intake.classify` never raises by contract: the decoders raise only `DecodeError`. Should a decoder
break that contract anyway (a bug, a `RecursionError` on deep nesting), the batch is classified again
message by message, and each message that still raises becomes one `decoder_error` dead letter with
its raw bytes; the others are kept. Likewise a record the stream format cannot encode (a lone
surrogate in a string) costs its own message an `unencodable` dead letter, not the batch. Pure: no
I/O, the clock comes in as `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway import decoders
from gateway.intake import Intake, Outcome, classify
from kernel.deadletters import letter
from kernel.records import RawMessage
from kernel.wire import encode_entry

DETAIL_MAX = 200


def classify_guarded(messages: Sequence[RawMessage], intake: Intake, now: datetime) -> tuple[Outcome, str | None]:
    """(outcome, None), or, when `classify` raised, the per-message outcome and what it raised."""
    try:
        return classify(messages, intake, now=now), None
    except Exception as exc:
        return _one_by_one(messages, intake, now, encode=False), _describe(exc)


def classify_isolated(messages: Sequence[RawMessage], intake: Intake, now: datetime) -> Outcome:
    """Each message classified and encoded alone: for a batch whose stream entry failed to encode."""
    return _one_by_one(messages, intake, now, encode=True)


def _one_by_one(messages: Sequence[RawMessage], intake: Intake, now: datetime, *, encode: bool) -> Outcome:
    outcome = classify([], intake, now=now)
    outcome.messages = messages
    for msg in messages:
        reason = "decoder_error"
        try:
            one = classify([msg], intake, now=now)
            if encode:
                reason = "unencodable"
                encode_entry(one.entry)
        except Exception as exc:
            route = decoders.route(msg.topic)
            device_id = route.device_id if route else None
            outcome.entry.dead.append(letter(msg.topic, msg.payload, reason, now, device_id, _describe(exc)))
            continue
        outcome.entry.records.extend(one.entry.records)
        outcome.entry.received_at.extend(one.entry.received_at)
        outcome.entry.dead.extend(one.entry.dead)
        outcome.status.update(one.status)
        outcome.acks.extend(one.acks)
        outcome.ignored.extend(one.ignored)
        outcome.counters.update(one.counters)
        outcome.warnings.extend(one.warnings)
    return outcome


def _describe(exc: BaseException) -> str:
    """`Type: message`, short, and storable as text whatever the message holds."""
    text = f"{type(exc).__name__}: {exc}"[:DETAIL_MAX]
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
