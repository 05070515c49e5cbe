"""What a refused message leaves behind, bounded so that no input can flood Redis or PostgreSQL.

- A dead letter keeps at most `MAX_PAYLOAD` bytes of what was refused, with the full length and
  the SHA-256 of all of it: enough to read what went wrong, to find the same message again and to
  tell repeats apart, without storing a 4 MiB payload twice (once in the stream, once in the table).
- One message yields at most one dead letter per reason: `fold` joins the refused parts of one
  message (NMEA lines, records of a batch) that share a reason into one letter with their `count`.
  A 16 KiB message of `$` lines is one letter of count 8,000, not 8,000 rows.
- `DeadLetterBudget` caps the letters one device may leave per minute; beyond it the device's
  rejects are counted, not stored, and one warning says so.

Pure: the clock comes in as `now`; the budget's state is an object the gateway keeps across batches.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from kernel.records import DeadLetter, Reject

# Control characters (tab, newline and carriage return excepted) and lone surrogates: what text we keep
# verbatim must not hold (PostgreSQL refuses NUL; the rest hides in logs and pages).
BAD_CHAR_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(value: str) -> str:
    """The same string with every control character and lone surrogate escaped as `\\xNN`/`\\uNNNN`:
    for text we keep whatever it holds (dead-letter topics and details), never for device data."""
    if BAD_CHAR_FREE_TEXT.search(value) is None:
        return value
    return BAD_CHAR_FREE_TEXT.sub(lambda m: m[0].encode("unicode_escape", "backslashreplace").decode(), value)


MAX_PAYLOAD = 1024
"""Bytes of the refused input kept in a dead letter (the rest is summarised by `size` and `sha256`)."""
MAX_DETAIL = 500
MAX_TOPIC = 256
PER_MINUTE = 100
"""Dead letters one device may leave per minute before its rejects are only counted."""
BUDGET_WINDOW_S = 60.0


def letter(
    topic: str,
    raw: bytes,
    reason: str,
    received_at: datetime,
    device_id: str | None = None,
    detail: str = "",
    count: int = 1,
) -> DeadLetter:
    """A dead letter of `raw`, bounded: a prefix of the bytes, their length and hash, and text that
    PostgreSQL can hold (control characters in a topic or detail escaped, never dropped)."""
    return DeadLetter(
        printable(topic[:MAX_TOPIC]),
        raw[:MAX_PAYLOAD],
        reason,
        received_at,
        device_id,
        printable(detail[:MAX_DETAIL]),
        count,
        len(raw),
        hashlib.sha256(raw).digest(),
    )


def storable(dead: DeadLetter) -> DeadLetter:
    """The same letter within the bounds, for the database edge: letters from an older gateway, or
    built elsewhere (a corrupt stream entry), may be whole and unescaped."""
    bounded = dead.sha256 and len(dead.payload) <= MAX_PAYLOAD
    if bounded and printable(dead.topic) == dead.topic and printable(dead.detail) == dead.detail:
        return dead
    full = not dead.sha256
    return replace(
        dead,
        topic=printable(dead.topic[:MAX_TOPIC]),
        payload=dead.payload[:MAX_PAYLOAD],
        reason=printable(dead.reason[:64]),
        device_id=None if dead.device_id is None else printable(dead.device_id[:MAX_TOPIC]),
        detail=printable(dead.detail[:MAX_DETAIL]),
        size=len(dead.payload) if full else dead.size,
        sha256=hashlib.sha256(dead.payload).digest() if full else dead.sha256,
    )


@dataclass(frozen=True, slots=True)
class Folded:
    """The refused parts of one message that share a reason: the first one's detail, all their
    bytes (newline-joined, as they came) and how many there were."""

    reason: str
    detail: str
    raw: bytes
    count: int


def fold(rejects: Iterable[Reject]) -> list[Folded]:
    """One entry per reason, in order of first appearance."""
    groups: dict[str, list[Reject]] = {}
    for reject in rejects:
        groups.setdefault(reject.reason, []).append(reject)
    return [
        Folded(reason, parts[0].detail, b"\n".join(p.raw for p in parts), len(parts))
        for reason, parts in groups.items()
    ]


Verdict = Literal["store", "warn", "drop"]


@dataclass(slots=True)
class _Window:
    start: datetime
    used: int = 0


@dataclass(slots=True)
class DeadLetterBudget:
    """`per_minute` dead letters per device and fixed minute window; then `warn` once, then `drop`.
    Letters without a device (a topic outside the protocol) share the budget of `""`."""

    per_minute: int = PER_MINUTE
    window_s: float = BUDGET_WINDOW_S
    _windows: dict[str, _Window] = field(default_factory=dict)
    _swept: datetime | None = None

    def take(self, device_id: str | None, now: datetime) -> Verdict:
        window = timedelta(seconds=self.window_s)
        self._sweep(now, window)
        key = device_id or ""
        state = self._windows.get(key)
        if state is None or now - state.start >= window:
            state = self._windows[key] = _Window(now)
        state.used += 1
        if state.used <= self.per_minute:
            return "store"
        return "warn" if state.used == self.per_minute + 1 else "drop"

    def _sweep(self, now: datetime, window: timedelta) -> None:
        """Forget windows that have ended, once a window: the state stays as large as the set of
        devices that misbehaved in the last minute."""
        if self._swept is not None and now - self._swept < window:
            return
        self._swept = now
        self._windows = {k: w for k, w in self._windows.items() if now - w.start < window}


def budgeted(
    letters: Sequence[DeadLetter], budget: DeadLetterBudget, now: datetime
) -> tuple[list[DeadLetter], list[DeadLetter], list[str]]:
    """(kept, dropped, warnings): the letters within their devices' budgets, the rest, and one
    warning per device the first time in a window that it goes over."""
    kept: list[DeadLetter] = []
    dropped: list[DeadLetter] = []
    warnings: list[str] = []
    for dead in letters:
        verdict = budget.take(dead.device_id, now)
        if verdict == "store":
            kept.append(dead)
            continue
        dropped.append(dead)
        if verdict == "warn":
            warnings.append(
                f"device {dead.device_id or '(no device)'} left more than {budget.per_minute} dead letters"
                f" in {budget.window_s:.0f} s: its rejects are counted, not stored, for the rest of the window"
            )
    return kept, dropped, warnings
