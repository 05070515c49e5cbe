"""API keys and the audit trail in PostgreSQL: the SQL behind `api.auth`, the key and audit routes
and the `fleet keys` command, so all three read and write through the same functions."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from api.keys import Role, key_id_of, matches, new_key

_KEY_COLUMNS = "id, name, role, created_at, created_by, last_used_at, revoked_at"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a write: an API key, or the `fleet` command on the server (`key_id` None)."""

    key_id: str | None
    name: str
    role: Role | None

    @classmethod
    def cli(cls) -> Actor:
        return cls(None, f"cli:{getpass.getuser()}", None)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    def public(self) -> dict[str, Any]:
        """What lists and the audit trail show: never the secret (which is not stored anyway)."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _key(row: tuple[Any, ...]) -> ApiKey:
    key_id, name, role, created, by, used, revoked = row
    return ApiKey(key_id, name, Role(role), created, by, used, revoked)


def create_key(conn: psycopg.Connection, name: str, role: Role, actor: Actor, route: str = "") -> tuple[ApiKey, str]:
    """Store a new key and audit it; returns the key and its token (to be shown once)."""
    made = new_key()
    row = conn.execute(
        f"INSERT INTO api_keys (id, name, role, secret_sha256, created_by) VALUES (%s, %s, %s, %s, %s)"
        f" RETURNING {_KEY_COLUMNS}",
        (made.id, name, Role(role).value, made.digest, actor.name),
    ).fetchone()
    assert row is not None
    key = _key(row)
    record(conn, actor, "key.create", key.id, None, key.public(), route)
    return key, made.token


def list_keys(conn: psycopg.Connection, *, include_revoked: bool = True) -> list[ApiKey]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return [_key(r) for r in conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id")]


def revoke_key(conn: psycopg.Connection, key_id: str, actor: Actor, route: str = "") -> ApiKey | None:
    """Revoke a key (refused from the next request on) and audit it; None when there is no such key.
    Revoking a revoked key changes nothing and records nothing."""
    before = conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = %s FOR UPDATE", (key_id,)).fetchone()
    if before is None:
        return None
    old = _key(before)
    if old.revoked_at is not None:
        return old
    row = conn.execute(
        f"UPDATE api_keys SET revoked_at = now() WHERE id = %s RETURNING {_KEY_COLUMNS}", (key_id,)
    ).fetchone()
    assert row is not None
    new = _key(row)
    record(conn, actor, "key.revoke", key_id, old.public(), new.public(), route)
    return new


def authenticate(conn: psycopg.Connection, token: str) -> Actor | None:
    """The actor a presented key stands for, or None (malformed, unknown, revoked or wrong secret).

    Read from the table on every request, so a revoke takes effect on the next one; `last_used_at`
    is written at most once a minute per key, so reads do not turn into a write each."""
    key_id = key_id_of(token)
    if key_id is None:
        return None
    row = conn.execute(
        "SELECT name, role, secret_sha256 FROM api_keys WHERE id = %s AND revoked_at IS NULL", (key_id,)
    ).fetchone()
    if row is None or not matches(token, bytes(row[2])):
        return None
    conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (key_id,),
    )
    return Actor(key_id, row[0], Role(row[1]))


# -- audit ----------------------------------------------------------------------------------------
def record(
    conn: psycopg.Connection,
    actor: Actor,
    action: str,
    target: str,
    before: Any,
    after: Any,
    route: str = "",
) -> None:
    """One audit row, in the caller's transaction: the write and its record commit together."""
    conn.execute(
        "INSERT INTO audit_log (key_id, key_name, role, action, route, target, before, after)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            actor.key_id,
            actor.name,
            actor.role.value if actor.role else None,
            action,
            route,
            target,
            None if before is None else Jsonb(before),
            None if after is None else Jsonb(after),
        ),
    )


def read_audit(conn: psycopg.Connection, filters: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Newest first. `filters` may hold key_id, action, target, since, until and before_id (the id
    of the last row of the previous page: paging by id stays stable while rows are added)."""
    where, params = ["true"], {"limit": limit}
    clauses = {
        "key_id": "key_id = %(key_id)s",
        "action": "action = %(action)s",
        "target": "target = %(target)s",
        "since": "time >= %(since)s",
        "until": "time < %(until)s",
        "before_id": "id < %(before_id)s",
    }
    for name, clause in clauses.items():
        if filters.get(name) is not None:
            where.append(clause)
            params[name] = filters[name]
    rows = conn.execute(
        "SELECT id, time, key_id, key_name, role, action, route, target, before, after FROM audit_log"
        f" WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %(limit)s",
        params,
    ).fetchall()
    names = ("id", "time", "key_id", "key_name", "role", "action", "route", "target", "before", "after")
    out = [dict(zip(names, row, strict=True)) for row in rows]
    for item in out:
        item["time"] = item["time"].isoformat()
    return out
