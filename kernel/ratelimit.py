"""Warnings that repeat (a broker away, a misbehaving device) are logged once at WARNING and then at
DEBUG for a while, so a storm of bad input cannot flood the log."""

from __future__ import annotations

import logging
import time

REPEAT_WINDOW_S = 60.0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, window_s: float = REPEAT_WINDOW_S) -> None:
        self._log = logger
        self._window = window_s
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self._window:
            self._last[key] = now
            self._log.warning(msg, *args)
        else:
            self._log.debug(msg, *args)
