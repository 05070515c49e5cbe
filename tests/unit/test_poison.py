"""`split_refused`: every good record stored once, every bad one reported, O(k log n) store calls."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.poison import max_calls, split_refused


class Refusal(Exception):
    pass


class Transient(Exception):
    pass


def _store_into(stored: list[int], bad: set[int]):  # type: ignore[no-untyped-def]
    def store(part: Sequence[int]) -> None:
        if any(i in bad for i in part):
            raise Refusal(f"refused {min(i for i in part if i in bad)}")
        stored.extend(part)  # all or nothing, like a savepoint

    return store


def _reason(exc: Exception) -> str | None:
    return str(exc) if isinstance(exc, Refusal) else None


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0)), max_size=n))))
def test_good_stored_once_in_order_bad_reported_within_the_bound(case: tuple[int, set[int]]) -> None:
    n, bad = case
    stored: list[int] = []
    result = split_refused(list(range(n)), _store_into(stored, bad), _reason)
    assert stored == [i for i in range(n) if i not in bad]
    assert result.refused_indices == bad
    assert all(r.item == r.index and r.reason == f"refused {r.index}" for r in result.refused)
    assert result.calls <= max_calls(n, len(bad))


def test_a_clean_batch_costs_one_call() -> None:
    stored: list[int] = []
    assert split_refused(list(range(1000)), _store_into(stored, set()), _reason).calls == 1
    assert len(stored) == 1000


def test_a_transient_error_is_not_split_but_raised() -> None:
    calls: list[int] = []

    def store(part: Sequence[int]) -> None:
        calls.append(len(part))
        raise Transient("connection lost")

    with pytest.raises(Transient):
        split_refused(list(range(8)), store, _reason)
    assert calls == [8]


def test_the_reason_is_truncated() -> None:
    def store(part: Sequence[int]) -> None:
        raise Refusal("x" * 10_000)

    (refused,) = split_refused([1], store, _reason).refused
    assert len(refused.reason) == 500


def test_the_split_and_the_guarded_intake_import_no_io_library() -> None:
    """Functional core: checked in a fresh interpreter, since this one has every library loaded."""
    import subprocess
    import sys

    forbidden = ["asyncio", "aiomqtt", "paho", "psycopg", "redis", "socket"]
    code = (
        "import sys, kernel.poison, gateway.guarded_intake\n"
        f"print(','.join(m for m in {forbidden!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imports {out.stdout.strip()}"
