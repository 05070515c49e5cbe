"""A decoder that breaks its contract costs its own message a dead letter, never the batch."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway import decoders
from gateway.guarded_intake import classify_guarded, classify_isolated
from gateway.intake import Intake
from kernel.records import RawMessage, Source, Telemetry
from kernel.wire import encode_entry

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _report(k: int, **extra: object) -> bytes:
    ts = (NOW - timedelta(seconds=60 - k)).isoformat()
    return orjson.dumps({"v": 1, "ts": ts, "lat": 52.5, "lon": 13.4, **extra})


def _fragile(msg: RawMessage, **kwargs: Any) -> decoders.Decoded:
    if b"deep" in msg.payload:
        raise RecursionError("maximum recursion depth exceeded")
    if b"surrogate" in msg.payload:  # a record the stream format cannot encode
        return decoders.Decoded([Telemetry("bike-1", NOW, Source.JSON, 52.5, 13.4, faults=("\ud800",))], [])
    return decoders.decode(msg, **kwargs)


INTAKE = Intake(decode=_fragile, max_payload=16384, future_tolerance_s=300, known=frozenset({"bike-1"}))


def _messages(bad: bytes) -> list[RawMessage]:
    good = [RawMessage("fleet/bike-1/telemetry", _report(k), NOW) for k in range(5)]
    return [*good[:2], RawMessage("fleet/bike-1/telemetry", bad, NOW), *good[2:]]


def test_a_raising_decoder_costs_one_dead_letter_and_keeps_the_rest() -> None:
    # `classify` itself turns a decoder's exception into a dead letter; the guard is the second line,
    # for a failure outside the decoders. Either way the outcome is the same.
    outcome, _failure = classify_guarded(_messages(_report(9, note="deep")), INTAKE, NOW)
    assert len(outcome.entry.records) == 5 and len(outcome.entry.received_at) == 5
    (dead,) = outcome.entry.dead
    assert (dead.reason, dead.device_id, dead.payload) == ("decoder_error", "bike-1", _report(9, note="deep"))
    assert len(outcome.messages) == 6


def test_a_healthy_batch_is_classified_once() -> None:
    outcome, failure = classify_guarded(_messages(_report(9)), INTAKE, NOW)
    assert failure is None and len(outcome.entry.records) == 6 and not outcome.entry.dead


def test_an_unencodable_record_costs_its_message_only() -> None:
    outcome = classify_isolated(_messages(_report(9, note="surrogate")), INTAKE, NOW)
    assert [d.reason for d in outcome.entry.dead] == ["unencodable"]
    assert len(outcome.entry.records) == 5
    encode_entry(outcome.entry)  # what is left encodes
    assert dataclasses.asdict(outcome.entry.dead[0])["topic"] == "fleet/bike-1/telemetry"
