"""Positions in the order ingest read them, although several ingest workers hand them on.

Ingest workers share `fleet:ingest` and each adds what it committed to `fleet:positions`, so a
worker that commits later entries first puts them ahead of earlier ones. The geofence state is
sequential per device: a device's older points arriving after newer ones were ignored, and zone
events were lost (`fleet bench geofence-e2e` with two ingest workers: 46 of 12,800 lost, 31 extra).

Each positions entry names its source entry in `fleet:ingest` (field `s`). Every source entry
below the ingest group's smallest pending id (its *watermark*) has been committed and handed on,
or was never going to be (dead letters, quarantine). So the worker takes the entries it holds in
source order up to the watermark and keeps the rest until the watermark passes them. Pure: the
caller reads the watermark (XPENDING) and the entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

SOURCE_FIELD = b"s"  # written by ingest.positions

Source = tuple[int, int]  # a stream id as (milliseconds, sequence)
E = TypeVar("E", bound=tuple[bytes, dict[bytes, bytes]])

UNKNOWN: Source = (0, 0)
"""An entry without a source (written by an older ingest, or by hand) goes first, in stream order."""


def parse_id(value: bytes | str | None) -> Source:
    """b"1733-2" → (1733, 2); anything unreadable counts as UNKNOWN rather than failing the worker."""
    if not value:
        return UNKNOWN
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return UNKNOWN


def source_of(entry: tuple[bytes, dict[bytes, bytes]]) -> Source:
    return parse_id(entry[1].get(SOURCE_FIELD)) if entry[1] else UNKNOWN


def release(held: Sequence[E], watermark: Source | None) -> tuple[list[E], list[E]]:
    """(ready, still held): `held` sorted by source (stable, so entries without one keep their
    stream order), ready being those below `watermark` (all of them when nothing is in flight,
    `watermark` None)."""
    ordered = sorted(held, key=source_of)
    if watermark is None:
        return ordered, []
    cut = next((i for i, e in enumerate(ordered) if source_of(e) >= watermark), len(ordered))
    return ordered[:cut], ordered[cut:]
