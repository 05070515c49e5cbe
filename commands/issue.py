"""Issuing and canceling a command: what the API, the CLI and the lockout engine share.

The command is stored (superseding what it replaces) and the service is woken through Redis; the
service would also find it on its next resync or restart, so a lost wake-up delays, never loses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg
import redis

from commands import store
from commands.fleetview import observe
from commands.lifecycle import initial_state
from commands.model import AUTOMATIC_REASONS, Action, Command, Rules, Vehicle, evolve, params_problem
from kernel import keys
from kernel.livestate import VEHICLES_KEY

WAKE_CHANNEL = keys.CMD_WAKE_CHANNEL
TRANSITIONS_CHANNEL = keys.COMMANDS_CHANNEL


class CommandRefused(Exception):
    """A request that cannot become a command. `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CommandRequest:
    device_id: str
    action: Action
    requested_by: str
    reason: str = "operator"
    params: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    ttl_s: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    command: Command
    created: bool  # False: the idempotency key named an earlier command, returned unchanged
    superseded: tuple[str, ...]


def issue(conn: psycopg.Connection, client: redis.Redis, req: CommandRequest, rules: Rules, now: datetime) -> Issued:
    """One command; raises `CommandRefused` with the status the API answers."""
    (result,) = issue_many(conn, client, [req], rules, now)
    if isinstance(result, CommandRefused):
        raise result
    return result


def issue_many(
    conn: psycopg.Connection, client: redis.Redis, reqs: Sequence[CommandRequest], rules: Rules, now: datetime
) -> list[Issued | CommandRefused]:
    """Many commands in one transaction (the lockout engine's thousands of expiries in a minute): each
    request gets its command or the reason it was refused, in order.

    The i-th command is created at `now` plus i microseconds: creation time is the order a device
    gets its commands in (the service sends oldest first), and a batch must keep the order given."""
    ids = sorted({r.device_id for r in reqs})
    status = dict(conn.execute("SELECT id, status FROM devices WHERE id = ANY(%s)", (ids,)).fetchall())
    vehicles = _vehicles(client, ids, rules)
    out: list[Issued | CommandRefused | None] = [None] * len(reqs)
    ids = new_ids(len(reqs))
    items: list[tuple[Command, str | None]] = []
    index: list[int] = []
    for i, req in enumerate(reqs):
        refusal = _refusal(req, status.get(req.device_id))
        if refusal is not None:
            out[i] = refusal
            continue
        ttl = rules.ttl_for(req.action, req.ttl_s)
        command = Command(
            id=ids[i], device_id=req.device_id, action=req.action, reason=req.reason,
            requested_by=req.requested_by, created_at=now + timedelta(microseconds=i),
            expires_at=now + timedelta(seconds=ttl),
            params=req.params, force=req.force,
        )  # fmt: skip
        state, detail = initial_state(command, vehicles.get(req.device_id, Vehicle()), now, rules)
        items.append((evolve(command, state=state, detail=detail, next_at=command.expires_at), req.idempotency_key))
        index.append(i)
    woken: list[str] = []
    for i, (stored, created, replaced) in zip(index, store.create_many(conn, items, now) if items else [], strict=True):
        if not created and _differs(stored.command, reqs[i]):
            out[i] = CommandRefused(409, "idempotency key already used for a different command on this device")
            continue
        out[i] = Issued(stored.command, created, tuple(c.id for c in replaced))
        if created:
            woken += [stored.command.id, *(c.id for c in replaced)]
    _wake(client, woken)
    return [r for r in out if r is not None]


def new_ids(n: int) -> list[str]:
    """`n` random version 4 UUIDs as text, from one read of the system's random source:
    `str(uuid.uuid4())` each was a sixth of a 500-command `issue_many`."""
    raw = bytearray(os.urandom(16 * n))
    for i in range(6, 16 * n, 16):
        raw[i] = raw[i] & 0x0F | 0x40  # version 4
        raw[i + 2] = raw[i + 2] & 0x3F | 0x80  # variant RFC 4122
    h = raw.hex()
    return [f"{h[j : j + 8]}-{h[j + 8 : j + 12]}-{h[j + 12 : j + 16]}-{h[j + 16 : j + 20]}-{h[j + 20 : j + 32]}"
            for j in range(0, 32 * n, 32)]  # fmt: skip


def _refusal(req: CommandRequest, status: str | None) -> CommandRefused | None:
    if req.force and (req.action is not Action.LOCK or req.reason in AUTOMATIC_REASONS):
        return CommandRefused(422, "force applies to an operator's lock only, never to a policy's")
    problem = params_problem(req.action, req.params)
    if problem is not None:
        return CommandRefused(422, problem)
    if status is None:
        return CommandRefused(404, f"unknown device {req.device_id!r}")
    if status != "active":
        return CommandRefused(409, f"device {req.device_id!r} is {status}: it cannot receive commands")
    return None


def cancel(conn: psycopg.Connection, client: redis.Redis, command_id: str, by: str, now: datetime) -> Command:
    stored, canceled = store.cancel(conn, command_id, by, now)
    if stored is None:
        raise CommandRefused(404, f"unknown command {command_id}")
    if not canceled:
        raise CommandRefused(
            409, f"command is {stored.command.state}: only a command not yet delivered can be canceled"
        )
    _wake(client, [command_id])
    return stored.command


def _vehicles(client: redis.Redis, device_ids: list[str], rules: Rules) -> dict[str, Vehicle]:
    found: dict[str, Vehicle] = {}
    for device_id, raw in zip(device_ids, client.hmget(VEHICLES_KEY, device_ids) if device_ids else [], strict=True):
        try:
            state = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            state = None
        if isinstance(state, dict):
            found[device_id] = observe(Vehicle(), state, rules)
    return found


WAKE_IDS_MAX = 1_000  # command ids per wake-up message


def _wake(client: redis.Redis, ids: list[str]) -> None:
    """One message per thousand ids, separated by spaces (a lone id is the old form, still read):
    a burst of 10,000 commands wakes the service 10 times, not 10,000."""
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(ids), WAKE_IDS_MAX):
            pipe.publish(WAKE_CHANNEL, " ".join(ids[i : i + WAKE_IDS_MAX]))
        pipe.execute()
    except redis.RedisError:
        pass  # stored: the service finds it when it resyncs


def _differs(command: Command, req: CommandRequest) -> bool:
    return (command.action, dict(command.params), command.force) != (req.action, req.params, req.force)
