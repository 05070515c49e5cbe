"""Versioned plain-SQL migrations, applied in order and recorded in `schema_migrations`.

Files are `NNNN_name.sql` next to this module. Each runs in its own transaction under an advisory
lock, so two services starting at once cannot apply the same migration twice. After every run the
services' grants (ingest/privileges.py) are brought in line with the tables that exist, under the
same lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import errors, sql

from ingest import privileges

log = logging.getLogger(__name__)

_LOCK_KEY = 0x466C656574  # arbitrary, constant: "Fleet"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("ingest.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


def migrate(database_url: str) -> list[Migration]:
    """Apply every migration not yet recorded; returns the ones applied now."""
    applied_now: list[Migration] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration)
            with conn.transaction():
                apply_privileges(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def public_tables(conn: psycopg.Connection) -> set[str]:
    """Tables and views of the schema (`public`); hypertable chunks live elsewhere and follow their table."""
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm')"
    ).fetchall()
    return {name for (name,) in rows}


def apply_privileges(conn: psycopg.Connection) -> None:
    """Make the services' table grants exactly what ingest/privileges.py says: grant what is missing,
    revoke what is not listed. Only the differences are sent, so a run with nothing to change sends
    no GRANT at all (each one on a hypertable is repeated on every chunk)."""
    roles = _ensure_roles(conn)
    tables = public_tables(conn)
    for table in sorted(privileges.unlisted(tables)):
        log.warning("table %s has no entry in ingest/privileges.py: no service may use it", table)
    want = {g for g in privileges.wanted(tables) if g[1] in roles}
    have = {
        (table, grantee, privilege)
        for table, grantee, privilege in conn.execute(
            "SELECT c.relname, a.grantee::regrole::text, a.privilege_type"
            " FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.relnamespace = 'public'::regnamespace AND a.grantee <> 0 AND a.grantee::regrole::text = ANY(%s)",
            (sorted(roles),),
        )
    }
    for verb, changes in (("REVOKE", have - want), ("GRANT", want - have)):
        for table, grantee, privilege in sorted(changes):
            statement = "GRANT {} ON {} TO {}" if verb == "GRANT" else "REVOKE {} ON {} FROM {}"
            conn.execute(sql.SQL(statement).format(sql.SQL(privilege), sql.Identifier(table), sql.Identifier(grantee)))


def _ensure_roles(conn: psycopg.Connection) -> set[str]:
    """The services' roles that exist, creating missing ones without login where we may (the local
    stack creates them with their passwords before; on your own server, give them LOGIN and a
    password, or grant them to your login roles)."""
    names = [privileges.role(s) for s in privileges.SERVICES]
    found = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))}
    for name in names:
        if name in found:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
            found.add(name)
        except (errors.InsufficientPrivilege, errors.DuplicateObject) as exc:
            if isinstance(exc, errors.DuplicateObject):
                found.add(name)
            else:
                log.warning("cannot create role %s (%s): its grants are skipped", name, exc.diag.message_primary)
    return found
