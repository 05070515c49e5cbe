"""The simulator's expectations agree with the gateway's decoders, message by message.

Every regular report must decode to exactly the records the ledger counts, and every rejecting
fault must earn exactly the reason the ledger expects, so a run's `SimSummary` can be compared
with the store and the dead-letter table.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from gateway.decoders import IGNORED_REASONS, decode
from kernel.records import DecodeError, RawMessage
from simulators.city import City
from simulators.config import SimConfig, report_message, role
from simulators.encode import encode_json, encode_json_batches
from simulators.faults import ACL_DENIED, EXPECTED_REASON, NO_FIX, STORED, FaultConfig, FaultKind, reject
from simulators.vehicle import Behaviour, initial_state, movement_rng, step

T0 = 1_795_000_000.0


def verdict(topic: str, payload: bytes, now: float) -> tuple[str, int]:
    """What the gateway makes of one message: (reason or `stored`, records stored)."""
    when = datetime.fromtimestamp(now, UTC)
    try:
        decoded = decode(RawMessage(topic, payload, when), now=when)
    except DecodeError as exc:
        return exc.reason, 0
    reasons = {r.reason for r in decoded.rejects}
    if decoded.records and not reasons:
        return STORED, len(decoded.records)
    assert len(reasons) == 1, reasons
    return reasons.pop(), len(decoded.records)


def readings(fmt: str, index: int, steps: int = 400):
    config = SimConfig(devices=20, fmt=fmt, seed=9)
    r = role(config, index)
    rng = movement_rng(9, index)
    state = initial_state(City(), Behaviour(), r.profile, rng, T0)
    for k in range(1, steps + 1):
        state, reading = step(City(), Behaviour(), r.profile, state, T0 + k, rng)
        yield r, reading


@pytest.mark.parametrize("fmt", ["json", "nmea", "owntracks"])
def test_regular_reports_decode_to_what_the_ledger_counts(fmt: str) -> None:
    seen = set()
    for index in range(3):
        for r, reading in readings(fmt, index):
            out = report_message(r, reading)
            if out is None:
                assert fmt == "owntracks" and reading.fix == 0
                continue
            got, records = verdict(out.topic, out.payload, reading.time + 1)
            seen.add(got)
            if out.expect == NO_FIX:
                assert got == NO_FIX and got in IGNORED_REASONS and records == 0
            else:
                assert (got, records) == (STORED, out.records) == (STORED, 1)
    assert STORED in seen


def test_offline_batches_decode_completely() -> None:
    batch = [reading for _, reading in readings("json", 1, 900)]
    for payload in encode_json_batches(batch, "sim-00001", max_bytes=16 * 1024):
        got, records = verdict("fleet/sim-00001/telemetry", payload, T0 + 1000)
        assert got == STORED and records == payload.count(b'"ts":')


@pytest.mark.parametrize("kind", [k for k in EXPECTED_REASON if EXPECTED_REASON[k] != ACL_DENIED])
@pytest.mark.parametrize("seed", range(8))
def test_each_fault_lands_with_its_reason(kind: FaultKind, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _, reading in readings("json", 2, 60):
        out = reject(kind, reading, "sim-00002", "sim-00003", FaultConfig(), rng)
        got, records = verdict(out.topic, out.payload, reading.time + 1)
        assert (got, records) == (out.expect, 0)


def test_foreign_topic_payload_is_valid_for_its_owner() -> None:
    """Only the broker ACL stands between this message and the store: the payload itself is fine."""
    _, reading = next(readings("json", 2, 1))
    out = reject(FaultKind.FOREIGN_TOPIC, reading, "sim-00002", "sim-00003", FaultConfig(), np.random.default_rng(0))
    assert out.expect == ACL_DENIED
    assert verdict(out.topic, out.payload, reading.time + 1) == (STORED, 1)


def test_skewed_clocks_are_accepted() -> None:
    _, reading = next(readings("json", 2, 1))
    for skew in (-240.0, 240.0):
        payload = encode_json(replace(reading, time=reading.time + skew), "sim-00002")
        assert verdict("fleet/sim-00002/telemetry", payload, reading.time) == (STORED, 1)
