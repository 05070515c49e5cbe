"""API keys and roles, pure: making a key, reading one back, comparing it with its stored hash.

A key reads `flt_<id>_<secret>`. The id (12 hex digits) is public: it finds the key's row, names it
in `fleet keys list` and in the audit trail, and lets an operator revoke a key without holding it.
The secret is `secrets.token_urlsafe(32)` (256 bits). Only SHA-256 of the whole key is stored, and
the presented key's hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "flt_"
_KEY = re.compile(r"flt_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{32,64})")
MAX_KEY_LENGTH = 100  # anything longer is not one of ours; refused before hashing


class Role(StrEnum):
    """Each role can do everything the roles before it can."""

    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # also commands, zones, service status
    ADMIN = "admin"  # also devices, customers, subscriptions, keys, the audit trail

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key as made: `token` is shown once and never stored; `digest` is what is stored."""

    id: str
    token: str
    digest: bytes


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, token, digest(token))


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def key_id_of(token: str) -> str | None:
    """The id part of a presented key, or None when it is not shaped like one of ours."""
    if len(token) > MAX_KEY_LENGTH:
        return None
    match = _KEY.fullmatch(token)
    return match["id"] if match else None


def matches(token: str, stored_digest: bytes) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)
