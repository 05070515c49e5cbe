"""Dead letters are bounded, folded per reason and budgeted per device: no input can flood the stores."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decoders import Reject
from kernel.deadletters import MAX_PAYLOAD, DeadLetterBudget, budgeted, fold, letter, storable
from kernel.records import DeadLetter

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=5000), topic=st.text(max_size=400), detail=st.text(max_size=800))
def test_a_letter_keeps_a_prefix_the_full_size_and_hash_and_storable_text(raw: bytes, topic: str, detail: str) -> None:
    dead = letter(topic, raw, "bad_json", NOW, "bike-1", detail)
    assert dead.payload == raw[:MAX_PAYLOAD]
    assert dead.size == len(raw)
    assert dead.sha256 == hashlib.sha256(raw).digest()
    for text in (dead.topic, dead.detail):
        assert "\x00" not in text
        text.encode()  # no lone surrogates: PostgreSQL and msgpack can hold it
    assert storable(dead) is dead  # already within bounds: nothing to redo at the database edge


def test_a_whole_letter_from_elsewhere_is_bounded_at_the_database_edge() -> None:
    raw = b"\x00" * 100_000
    whole = DeadLetter("fleet:ingest", raw, "corrupt_entry", NOW, detail="msgpack: bad \x00 byte")
    dead = storable(whole)
    assert (len(dead.payload), dead.size, dead.sha256) == (MAX_PAYLOAD, 100_000, hashlib.sha256(raw).digest())
    assert dead.detail == "msgpack: bad \\x00 byte"


@settings(max_examples=200, deadline=None)
@given(reasons=st.lists(st.sampled_from(["bad_schema", "bad_checksum", "out_of_range"]), max_size=200))
def test_fold_gives_one_entry_per_reason_covering_every_part(reasons: list[str]) -> None:
    rejects = [Reject(r, f"part {i}", f"${i}".encode()) for i, r in enumerate(reasons)]
    folded = fold(rejects)
    assert [f.reason for f in folded] == list(dict.fromkeys(reasons))
    assert sum(f.count for f in folded) == len(reasons)
    for f in folded:
        parts = [r for r in rejects if r.reason == f.reason]
        assert f.raw == b"\n".join(p.raw for p in parts)
        assert f.detail == parts[0].detail


def _letters(device: str | None, n: int) -> list[DeadLetter]:
    return [letter("fleet/x/telemetry", b"x", "bad_json", NOW, device) for _ in range(n)]


@settings(max_examples=100, deadline=None)
@given(per_minute=st.integers(1, 50), n=st.integers(0, 200), batches=st.integers(1, 5))
def test_budget_stores_at_most_per_minute_then_counts_with_one_warning(per_minute: int, n: int, batches: int) -> None:
    budget = DeadLetterBudget(per_minute=per_minute)
    kept = dropped = warned = 0
    for b in range(batches):  # batches within one minute share the window
        k, d, w = budgeted(_letters("bike-1", n), budget, NOW + timedelta(seconds=b))
        kept, dropped, warned = kept + len(k), dropped + len(d), warned + len(w)
    assert kept == min(per_minute, n * batches)
    assert kept + dropped == n * batches
    assert warned == (1 if n * batches > per_minute else 0)


def test_budget_is_per_device_and_per_minute() -> None:
    budget = DeadLetterBudget(per_minute=3)
    assert len(budgeted(_letters("bike-1", 5), budget, NOW)[0]) == 3
    assert len(budgeted(_letters("bike-2", 5), budget, NOW)[0]) == 3  # another device is unaffected
    assert len(budgeted(_letters("bike-1", 5), budget, NOW + timedelta(seconds=59))[0]) == 0
    kept, _, warnings = budgeted(_letters("bike-1", 5), budget, NOW + timedelta(seconds=60))
    assert len(kept) == 3 and len(warnings) == 1  # a new window, and a new warning when it is spent


def test_budget_forgets_devices_whose_window_ended() -> None:
    budget = DeadLetterBudget(per_minute=3)
    for i in range(1000):
        budgeted(_letters(f"bike-{i}", 1), budget, NOW)
    budgeted(_letters("bike-x", 1), budget, NOW + timedelta(minutes=2))
    assert set(budget._windows) == {"bike-x"}
