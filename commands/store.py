"""Commands in PostgreSQL: the current state one row per command, the audit log appended beside it.

Every change is a compare-and-set on `version`, so two writers (two command services, the API
canceling while the service sends) never both move the same command: the loser reloads and decides
again from what is stored. The functions take an open connection and leave the transaction to the
caller, except `create`, `apply` and `cancel`, which are one transaction each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from commands.lifecycle import Canceled, Step, Superseded, step, superseded_by
from commands.model import DESIRED_STATE, Action, Command, Rules, State, Transition, Vehicle, command_from, evolve

_COLUMNS = (
    "id::text, device_id, action, params::text, reason, requested_by, force, state, detail, attempts,"
    " created_at, expires_at, sent_at, next_at, version, idempotency_key"
)
# A delivered command is watched for its confirmation until its time to live ends.
_ACTIVE = "(state IN ('queued', 'waiting_for_park', 'sent') OR (state = 'delivered' AND next_at > now()))"


_ACTIONS = {str(a): a for a in Action}  # a dict lookup, not the slower Enum call
_STATES = {str(s): s for s in State}


@dataclass(frozen=True, slots=True)
class Stored:
    command: Command
    idempotency_key: str | None


def _command(row: tuple[Any, ...]) -> Stored:
    params = row[3] if isinstance(row[3], dict) else orjson.loads(row[3])
    command = command_from(
        id=row[0], device_id=row[1], action=_ACTIONS[row[2]], params=params, reason=row[4], requested_by=row[5],
        force=row[6], state=_STATES[row[7]], detail=row[8], attempts=row[9], created_at=row[10],
        expires_at=row[11], sent_at=row[12], next_at=row[13], version=row[14],
    )  # fmt: skip
    return Stored(command, row[15])


def get(conn: psycopg.Connection, command_id: str) -> Stored | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = %s", (command_id,)).fetchone()
    return _command(row) if row else None


def get_many(conn: psycopg.Connection, command_ids: Sequence[str]) -> dict[str, Command]:
    ids = _array(_quoted(i) for i in command_ids)
    rows = conn.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = ANY(%s::uuid[])", (ids,))
    return {c.id: c for c in (_command(r).command for r in rows.fetchall())}


def load_active(conn: psycopg.Connection, device_ids: Sequence[str] | None = None) -> list[Command]:
    """Everything the service must keep an eye on, oldest first (the order devices get them in)."""
    sql = f"SELECT {_COLUMNS} FROM commands WHERE {_ACTIVE}"
    params: tuple[Any, ...] = ()
    if device_ids is not None:
        sql += " AND device_id = ANY(%s)"
        params = (list(device_ids),)
    rows = conn.execute(sql + " ORDER BY created_at, id", params).fetchall()
    return [_command(r).command for r in rows]


def listing(
    conn: psycopg.Connection, *, device: str | None, state: str | None, since: datetime | None, limit: int
) -> list[Command]:
    where, params = [], []
    for clause, value in (("device_id = %s", device), ("state = %s", state), ("created_at >= %s", since)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = f"SELECT {_COLUMNS} FROM commands" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY created_at DESC LIMIT %s", (*params, limit)).fetchall()
    return [_command(r).command for r in rows]


def transitions(conn: psycopg.Connection, command_id: str) -> list[Transition]:
    rows = conn.execute(
        "SELECT at, from_state, to_state, actor, detail FROM command_transitions WHERE command_id = %s ORDER BY seq",
        (command_id,),
    ).fetchall()
    return [Transition(command_id, r[0], State(r[1]) if r[1] else None, State(r[2]), r[3], r[4]) for r in rows]


def _append(conn: psycopg.Connection, rows: Sequence[Transition]) -> None:
    if not rows:
        return
    with conn.cursor().copy(
        "COPY command_transitions (command_id, at, from_state, to_state, actor, detail) FROM STDIN"
    ) as copy:
        for t in rows:
            copy.write_row((t.command_id, t.at, t.from_state and str(t.from_state), str(t.to_state), t.actor, t.detail))


def create(
    conn: psycopg.Connection, command: Command, idempotency_key: str | None, now: datetime
) -> tuple[Stored, bool, list[Command]]:
    """`create_many` for one command."""
    return create_many(conn, [(command, idempotency_key)], now)[0]


def create_many(
    conn: psycopg.Connection, items: Sequence[tuple[Command, str | None]], now: datetime
) -> list[tuple[Stored, bool, list[Command]]]:
    """Store new commands in the order given and supersede what each replaces, in one transaction.

    For each: (the stored command, whether it is new, the commands it superseded). A key already used
    for the device returns the earlier command unchanged. Creations for one device are serialised by
    an advisory lock per device (taken in id order, so two batches cannot deadlock), so two racing
    locks cannot both stay pending. A batch holding a lock and then an unlock for one device stores
    the lock as superseded.
    """
    with conn.transaction():
        devices = sorted({c.device_id for c, _ in items})
        # one statement for all (in id order: unnest keeps the array's order)
        conn.execute("SELECT count(pg_advisory_xact_lock(hashtext(d))) FROM unnest(%s::text[]) AS d", (devices,))
        known = _by_key(conn, [(c.device_id, k) for c, k in items if k is not None])
        new: list[tuple[int, Command, str | None]] = []
        results: list[tuple[Stored, bool, list[Command]]] = []
        for i, (command, key) in enumerate(items):
            earlier = known.get((command.device_id, key)) if key is not None else None
            if earlier is not None:
                results.append((earlier, False, []))
                continue
            if key is not None:
                known[(command.device_id, key)] = Stored(command, key)
            new.append((i, command, key))
            results.append((Stored(command, key), True, []))
        desired = sorted({c.device_id for _, c, _ in new if c.action in DESIRED_STATE})
        pending: dict[str, list[Command]] = {}
        for old in load_active(conn, desired) if desired else []:
            pending.setdefault(old.device_id, []).append(old)
        _insert(conn, [(c, k) for _, c, k in new], now)
        changes: dict[str, tuple[Command, Step]] = {}
        replaced_by: dict[str, list[str]] = {}
        for _, command, _ in new:
            if command.action not in DESIRED_STATE:
                continue
            for old in superseded_by(command, pending.get(command.device_id, [])):
                changes[old.id] = (old, step(old, Superseded(now, command.id), Vehicle(), Rules()))
                replaced_by.setdefault(command.id, []).append(old.id)
            pending[command.device_id] = [command]
        won = _cas(conn, list(changes.values()))
        rows = [Transition(c.id, now, None, c.state, c.requested_by, c.detail) for _, c, _ in new]
        _append(conn, rows + [t for cid in won for t in changes[cid][1].transitions])
    final = {cid: evolve(changes[cid][1].command, version=changes[cid][0].version + 1) for cid in won}
    out = []
    for stored, created, _ in results:
        command = final.get(stored.command.id, stored.command)
        replaced = [final[cid] for cid in replaced_by.get(command.id, []) if cid in final] if created else []
        out.append((Stored(command, stored.idempotency_key), created, replaced))
    return out


def _by_key(conn: psycopg.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str | None], Stored]:
    if not keys:
        return {}
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE (device_id, idempotency_key) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([d for d, _ in keys], [k for _, k in keys]),
    ).fetchall()
    found = [_command(r) for r in rows]
    return {(s.command.device_id, s.idempotency_key): s for s in found}


def _insert(conn: psycopg.Connection, items: Sequence[tuple[Command, str | None]], now: datetime) -> None:
    with conn.cursor().copy(
        "COPY commands (id, device_id, action, params, reason, requested_by, force, idempotency_key,"
        " state, detail, created_at, expires_at, next_at, updated_at) FROM STDIN"
    ) as copy:
        for c, key in items:
            copy.write_row((
                c.id, c.device_id, str(c.action), Jsonb(dict(c.params), dumps=orjson.dumps), c.reason, c.requested_by,
                c.force, key, str(c.state), c.detail, c.created_at, c.expires_at, c.next_at, now,
            ))  # fmt: skip


def _cas(conn: psycopg.Connection, changes: Sequence[tuple[Command, Step]]) -> set[str]:
    """Write each step's command where its stored version is still the one it was decided from.

    The columns go as seven array literals built here (`_array`): psycopg's list dumper costs
    microseconds per element, and a burst moves tens of thousands of commands."""
    if not changes:
        return set()
    commands = [done.command for _, done in changes]
    cols = [
        _array(before.id for before, _ in changes),
        _array(str(before.version) for before, _ in changes),
        _array(str(c.state) for c in commands),
        _array(_quoted(c.detail) for c in commands),
        _array(str(c.attempts) for c in commands),
        _array(_when(c.sent_at) for c in commands),
        _array(_when(c.next_at) for c in commands),
    ]
    rows = conn.execute(
        "UPDATE commands c SET state = u.state, detail = u.detail, attempts = u.attempts, sent_at = u.sent_at,"
        " next_at = u.next_at, updated_at = now(), version = c.version + 1"
        " FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::int[], %s::timestamptz[],"
        " %s::timestamptz[]) AS u(id, version, state, detail, attempts, sent_at, next_at)"
        " WHERE c.id = u.id AND c.version = u.version RETURNING c.id::text",
        cols,
    ).fetchall()
    return {r[0] for r in rows}


def _array(items: Iterable[str]) -> str:
    """A PostgreSQL array literal of elements already in their literal form (`_quoted`, `_when`)."""
    return "{" + ",".join(items) + "}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _when(at: datetime | None) -> str:
    return "NULL" if at is None else '"' + at.isoformat() + '"'


def apply(conn: psycopg.Connection, changes: Sequence[tuple[Command, Step]]) -> list[Step]:
    """Store the steps that change something, in one transaction; returns those that won (each with
    its command's new version). A step that lost (another writer moved the command first) is left
    out: the caller reloads that command."""
    wanted = [(b, s) for b, s in changes if s.transitions]
    if not wanted:
        return []
    with conn.transaction():
        won = _cas(conn, wanted)
        applied = [
            Step(evolve(s.command, version=b.version + 1), s.transitions, s.publish) for b, s in wanted if b.id in won
        ]
        _append(conn, [t for s in applied for t in s.transitions])
    return applied


def cancel(conn: psycopg.Connection, command_id: str, by: str, now: datetime) -> tuple[Stored | None, bool]:
    """Cancel if not yet delivered. Returns (the command as stored after, whether it was canceled now)."""
    for _ in range(5):
        stored = get(conn, command_id)
        if stored is None:
            return None, False
        done = step(stored.command, Canceled(now, by), Vehicle(), Rules())
        if not done.transitions:
            return stored, False
        applied = apply(conn, [(stored.command, done)])
        if applied:
            return Stored(applied[0].command, stored.idempotency_key), True
    return get(conn, command_id), False


def dead_letter(
    conn: psycopg.Connection, stream: str, dead: Sequence[tuple[bytes, dict[bytes, bytes], str]], now: datetime
) -> None:
    """Stream entries the service cannot use, kept with their bytes beside the gateway's dead letters."""
    rows = [
        (entry_id.decode(), 0, now, stream, reason.split(":")[0][:60], reason[:500], fields.get(b"a", b""))
        for entry_id, fields, reason in dead
    ]
    with conn.transaction():
        conn.cursor().executemany(
            "INSERT INTO dead_letters (stream_entry, seq, received_at, topic, reason, detail, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )
