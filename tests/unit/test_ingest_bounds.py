"""The sizes ingest works in: transactions from entry lengths, the positions stream's bound."""

from __future__ import annotations

from ingest.positions import POSITIONS_MAX_BYTES, positions_maxlen
from ingest.service import _split


def _entries(*records: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [(f"{i}-0".encode(), {b"b": b"x" * (120 * n)}) for i, n in enumerate(records)]


def test_a_transaction_takes_whole_entries_up_to_the_row_bound() -> None:
    head, rest = _split(_entries(400, 400, 400), max_rows=1000)
    assert (len(head), len(rest)) == (2, 1)
    head, rest = _split(_entries(5000, 10), max_rows=1000)  # one entry larger than the bound still goes
    assert (len(head), len(rest)) == (1, 1)
    head, rest = _split(_entries(1, 1), max_rows=1000)
    assert (len(head), rest) == (2, [])


def test_the_positions_stream_holds_about_the_same_bytes_whatever_its_entries_weigh() -> None:
    for entry_bytes in (1_200, 120_000, 1_200_000):
        held = positions_maxlen(entry_bytes) * entry_bytes
        assert 0.9 * POSITIONS_MAX_BYTES <= held <= POSITIONS_MAX_BYTES
    assert positions_maxlen(10**12) == 1  # never fewer entries than that
    assert positions_maxlen(1000, max_bytes=10_000) == 10
