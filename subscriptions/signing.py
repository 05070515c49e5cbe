"""Webhook signatures, modelled on Stripe's: `Fleet-Signature: t=<unix seconds>,v1=<hex>`.

v1 is HMAC-SHA256 with the shared secret over `<t>.<raw body>`. Several v1 entries may be given (a
sender rotating its secret signs with both); one match is enough. Compared in constant time. A
timestamp more than `tolerance_s` from now (either way) is refused, so a captured request cannot be
replayed later; within the window the event id deduplicates it. Pure: `now` is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "Fleet-Signature"
TOLERANCE_S = 300.0
MAX_HEADER = 1024


class SignatureError(ValueError):
    """Why a request is refused (said in the 401's detail; never the expected signature)."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(header: str | None, body: bytes, secret: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> int:
    """The signed timestamp, or SignatureError: unsigned, malformed, too old (or from the future), bad."""
    if not header:
        raise SignatureError(f"unsigned: the {HEADER} header is missing")
    if len(header) > MAX_HEADER:
        raise SignatureError(f"malformed {HEADER} header: too long")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {HEADER} header: expected t=<unix seconds>,v1=<hex>")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp outside the {tolerance_s:.0f} s window: too old, or the clocks differ")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates):
        raise SignatureError("bad signature")
    return timestamp
