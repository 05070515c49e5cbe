"""Positions taken in ingest's order up to its watermark, whatever order ingest workers added them."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from geofence.handoff_order import SOURCE_FIELD, UNKNOWN, parse_id, release


def entry(i: int, source: str | None) -> tuple[bytes, dict[bytes, bytes]]:
    fields = {b"b": b"x"} if source is None else {b"b": b"x", SOURCE_FIELD: source.encode()}
    return f"9-{i}".encode(), fields


def test_parse_id() -> None:
    assert parse_id(b"1733-2") == (1733, 2)
    assert parse_id("17") == (17, 0)
    assert parse_id(None) == UNKNOWN and parse_id(b"junk-x") == UNKNOWN


def test_later_entries_wait_for_an_earlier_one_in_flight() -> None:
    held = [entry(0, "100-0"), entry(1, "300-0"), entry(2, "50-1")]  # 300 committed before 200
    ready, rest = release(held, parse_id(b"200-0"))  # 200-0 still pending at an ingest worker
    assert [e[0] for e in ready] == [b"9-2", b"9-0"] and [e[0] for e in rest] == [b"9-1"]
    ready, rest = release([*rest, entry(3, "200-0")], None)  # 200 handed on, nothing in flight
    assert [e[0] for e in ready] == [b"9-3", b"9-1"] and rest == []


def test_entries_without_a_source_go_first_in_stream_order() -> None:
    held = [entry(0, "5-0"), entry(1, None), entry(2, None)]
    ready, rest = release(held, parse_id(b"1-0"))
    assert [e[0] for e in ready] == [b"9-1", b"9-2"] and [e[0] for e in rest] == [b"9-0"]


@given(st.lists(st.integers(1, 10_000), unique=True, min_size=1, max_size=40), st.integers(0, 2**32))
def test_released_in_source_order_whatever_the_arrival_order(sources: list[int], seed: int) -> None:
    """Ingest hands entries on in any order; released batches, concatenated, are in source order and
    hold every entry once, and nothing at or above the watermark is released."""
    arrivals = sources[:]
    random.Random(seed).shuffle(arrivals)
    order = sorted(sources)
    out: list[int] = []
    held: list = []
    for k, s in enumerate(arrivals):
        held.append(entry(k, f"{s}-0"))
        arrived = set(arrivals[: k + 1])
        in_flight = [x for x in order if x not in arrived]
        watermark = (in_flight[0], 0) if in_flight else None
        ready, held = release(held, watermark)
        assert all(watermark is None or parse_id(e[1][SOURCE_FIELD]) < watermark for e in ready)
        out += [parse_id(e[1][SOURCE_FIELD])[0] for e in ready]
    assert out == order and held == []
