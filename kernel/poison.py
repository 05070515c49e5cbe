"""Finding the records a store refuses in a batch it would otherwise take, by splitting the batch.

A batch write is all or nothing: one record the database refuses for good (a NUL in a string, a
number outside a column's range) fails the whole COPY, and a consumer that retried it as a whole
would stop on that batch forever. `split_refused` tries the batch, and on a refusal tries each half,
recursively, until every refused record stands alone. With k bad records among n it makes at most
about 2·k·log2(n) + 1 calls; a batch without bad records costs exactly one, so the fast path is
unchanged.

Pure: the store is a callable, and which exceptions count as a refusal is the caller's decision
(`refusal` returns the reason to record, or None for an error that must propagate, such as a lost
connection: that batch is retried whole, not split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DETAIL_MAX = 500  # characters of the store's reason kept with a refused record


@dataclass(frozen=True, slots=True)
class Refused(Generic[T]):
    index: int  # position in the batch handed to `split_refused`
    item: T
    reason: str


@dataclass(frozen=True, slots=True)
class SplitResult(Generic[T]):
    refused: list[Refused[T]]
    calls: int  # how many times the store was called (the whole batch's try included)

    @property
    def refused_indices(self) -> set[int]:
        return {r.index for r in self.refused}


def split_refused(
    items: Sequence[T],
    store: Callable[[Sequence[T]], object],
    refusal: Callable[[Exception], str | None],
) -> SplitResult[T]:
    """Store every item `store` accepts, each exactly once, and report the others with their reason.

    `store(part)` must either store all of `part` or nothing (a transaction or a savepoint). An
    exception for which `refusal` returns None is re-raised at once; the caller retries the batch.
    """
    refused: list[Refused[T]] = []
    calls = 0
    # An explicit stack instead of recursion: the depth is log2(n), but a store of a huge batch
    # should not depend on the interpreter's recursion limit either. Left halves are tried first,
    # so records are stored in their batch order.
    stack: list[tuple[int, int]] = [(0, len(items))]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue
        calls += 1
        try:
            store(items[lo:hi])
            continue
        except Exception as exc:
            reason = refusal(exc)
            if reason is None:
                raise
        if hi - lo == 1:
            refused.append(Refused(lo, items[lo], reason[:DETAIL_MAX]))
            continue
        mid = (lo + hi) // 2
        stack.append((mid, hi))
        stack.append((lo, mid))
    return SplitResult(refused, calls)


def max_calls(n: int, k: int) -> int:
    """The bound `split_refused` keeps: the whole batch, then for each bad record the two halves
    tried at each level of its path down the split tree (log2 n levels at most)."""
    if n <= 1:
        return 1
    return 1 + 2 * k * max(1, (n - 1).bit_length())
