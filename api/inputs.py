"""Bounds on what the API accepts from outside, pure: strings, times and the work one call may cause.

The database refuses NUL in text and cannot hold lone surrogates; dates far outside the fleet's life
overflow the conversions on the way to it. Each of those used to surface as a 500. Here they are
found first and answered with a 422 that names the parameter and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator

# Path segments and query parameters are ids, names and times: no control character has a place.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Body text may be free text (a zone's name): tab, line feed and carriage return are allowed there.
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_RECOMPUTE = timedelta(days=31)  # how far back one status change may rewrite utilization
MAX_BODY_BYTES = 2 * 1024 * 1024  # a zone at the vertex limit is about 400 KB of GeoJSON


def text_problem(value: str, *, free_text: bool = False) -> str | None:
    """Why `value` cannot be stored as text, or None when it can."""
    bad = (_BODY_CONTROL if free_text else _CONTROL).search(value)
    if bad:
        return f"control character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed"
    bad = _SURROGATE.search(value)
    if bad:
        return f"lone surrogate U+{ord(bad.group()):04X} at position {bad.start()} is not valid text"
    return None


def body_problems(body: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(location, reason) for every string (key or value) or number in a parsed JSON body that the
    fleet cannot store: control characters, lone surrogates, NaN and infinities. Walks with its
    own stack and links each place to its parent (a location is spelled out only for a problem),
    so neither a deep nor a wide body costs more than one visit per value."""
    Place = tuple[Any, str | int] | None  # (parent place, key), None for the body itself
    stack: list[tuple[Place, Any]] = [(None, body)]
    while stack:
        place, value = stack.pop()
        if isinstance(value, str):
            reason = text_problem(value, free_text=True)
            if reason:
                yield _location(place), reason
        elif isinstance(value, float):
            if not math.isfinite(value):
                yield _location(place), f"number {value!r} is not finite"
        elif isinstance(value, dict):
            for key, item in value.items():
                reason = text_problem(key)
                if reason:
                    yield _location(place), f"key {key!r}: {reason}"
                stack.append(((place, key), item))
        elif isinstance(value, list):
            stack.extend(((place, i), item) for i, item in enumerate(value))


def _location(place: Any) -> tuple[str | int, ...]:
    keys: list[str | int] = []
    while place is not None:
        place, key = place
        keys.append(key)
    return ("body", *reversed(keys))


def check_time(value: datetime) -> datetime:
    """A time must lie in [1970, 2100); without an offset it is taken as UTC. Returned in UTC."""
    if not EARLIEST.year <= value.year < LATEST.year + 1:
        raise ValueError(f"time must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"time must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return aware.astimezone(UTC)


FleetTime = Annotated[datetime, AfterValidator(check_time)]
"""A datetime parameter or field that the fleet can store and compute with."""


def recompute_problem(since: datetime, now: datetime) -> str | None:
    """A status change rewrites utilization from `since` to now: refuse one reaching too far back."""
    if now - since > MAX_RECOMPUTE:
        return (
            f"'since' may reach back at most {MAX_RECOMPUTE.days} days: a status change recomputes the"
            " device's utilization from then up to now"
        )
    return None
