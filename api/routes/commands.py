"""Remote commands: issue one to a device, follow it through its transitions, cancel it.

A new command is answered with 202 Accepted: it is stored and the command service takes it from
there; its `state` shows at once when a lock waits for a moving vehicle to park. The same
idempotency key for the same device returns the first command (200) instead of a second one.
Transitions are published live on the Redis channel `fleet:commands` by the service.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import VIEWER, OperatorKey, route_of
from api.db import SyncPoolDep
from api.deps import RedisDep
from api.keys import Role
from commands import store
from commands.issue import CommandRefused, CommandRequest, Issued, cancel, issue
from commands.model import Action, Command, Rules, State, Transition
from commands.settings import CommandSettings
from subscriptions.guard import unlock_refusal
from subscriptions.policy import PolicySettings
from subscriptions.settings import LockoutSettings

router = APIRouter(tags=["commands"])

REASON = r"^[a-z][a-z0-9_]{0,63}$"
_REFUSALS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device or command"},
    403: {"description": "override asked by a key below admin"},
    409: {
        "description": "refused: a disabled device, an idempotency key reused, a command already delivered,"
        " an unlock the device's subscription does not allow (an admin may override)"
    },
    422: {"description": "unknown action, parameters that do not fit it, force on a policy's command"},
}


class CommandCreate(BaseModel):
    action: Action
    params: dict[str, Any] = Field(default_factory=dict, description="set_speed_limit: kmh; alarm: duration_s")
    reason: str = Field(default="operator", pattern=REASON, description="operator, theft, subscription_expired, …")
    force: bool = Field(default=False, description="an operator's lock that may immobilise a moving vehicle")
    ttl_s: float | None = Field(default=None, gt=0, description="time to live; default per action, capped")
    idempotency_key: str | None = Field(default=None, max_length=200, description="or the Idempotency-Key header")
    override: bool = Field(default=False, description="admin only: unlock although the subscription does not allow it")


class TransitionPublic(BaseModel):
    at: datetime
    from_state: State | None
    to_state: State
    actor: str
    detail: str


class CommandPublic(BaseModel):
    id: str
    device_id: str
    action: Action
    params: dict[str, Any]
    reason: str
    requested_by: str
    force: bool
    state: State
    detail: str = Field(description="why it waits, what the device said, why it ended")
    attempts: int
    created_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    superseded: list[str] = Field(default_factory=list, description="older commands this one replaced")


class CommandDetail(CommandPublic):
    transitions: list[TransitionPublic]


def _public(command: Command, superseded: tuple[str, ...] = ()) -> CommandPublic:
    return CommandPublic(
        id=command.id, device_id=command.device_id, action=command.action, params=dict(command.params),
        reason=command.reason, requested_by=command.requested_by, force=command.force, state=command.state,
        detail=command.detail, attempts=command.attempts, created_at=command.created_at,
        expires_at=command.expires_at, sent_at=command.sent_at, superseded=list(superseded),
    )  # fmt: skip


def _transition(t: Transition) -> TransitionPublic:
    return TransitionPublic(at=t.at, from_state=t.from_state, to_state=t.to_state, actor=t.actor, detail=t.detail)


def _policy(request: Request) -> PolicySettings:
    policy = getattr(request.app.state, "lockout_policy", None)
    if policy is None:
        policy = request.app.state.lockout_policy = LockoutSettings().policy()
    return policy


def _rules(request: Request) -> Rules:
    rules = getattr(request.app.state, "command_rules", None)
    if rules is None:
        rules = request.app.state.command_rules = CommandSettings().rules()
    return rules


@router.post("/v1/devices/{device_id}/commands", status_code=202, responses=_REFUSALS)
async def send_command(
    actor: OperatorKey, device_id: str, body: CommandCreate, request: Request, response: Response,
    pool: SyncPoolDep, redis: RedisDep, idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> CommandPublic:  # fmt: skip
    """Operators and admins; `requested_by` is the API key's name."""
    req = CommandRequest(device_id, body.action, f"key:{actor.name}", body.reason, body.params, body.force,
                         body.ttl_s, idempotency_key or body.idempotency_key)  # fmt: skip
    rules = _rules(request)
    if body.override and actor.role is not Role.ADMIN:
        raise HTTPException(403, "only an admin may override the subscription's lockout")
    policy = _policy(request)

    def run() -> Issued:
        with pool.connection() as conn:
            conn.autocommit = True
            refusal = (
                unlock_refusal(conn, device_id, policy, datetime.now(UTC)) if body.action is Action.UNLOCK else None
            )
            if refusal is not None and not body.override:
                raise CommandRefused(409, f'{refusal}; an admin may override with "override": true')
            issued = issue(conn, redis, req, rules, datetime.now(UTC))
            if issued.created and refusal is not None:
                keystore.record(conn, actor, "command.unlock_override", device_id, {"refusal": refusal},
                                _public(issued.command).model_dump(mode="json"), route_of(request))  # fmt: skip
            if issued.created:
                keystore.record(conn, actor, "command.send", device_id, None,
                                _public(issued.command, issued.superseded).model_dump(mode="json"),
                                route_of(request))  # fmt: skip
            return issued

    try:
        issued = await run_in_threadpool(run)
    except CommandRefused as exc:
        raise HTTPException(exc.status, exc.reason) from None
    if not issued.created:
        response.status_code = 200
    return _public(issued.command, issued.superseded)


def _listing(pool: SyncPoolDep, device: str | None, state: State | None, since: datetime | None, limit: int):  # type: ignore[no-untyped-def]
    def run() -> list[Command]:
        with pool.connection() as conn:
            return store.listing(conn, device=device, state=state and str(state), since=since, limit=limit)

    return run_in_threadpool(run)


@router.get("/v1/commands", dependencies=[VIEWER])
async def list_commands(
    pool: SyncPoolDep, device: str | None = None, state: State | None = None, since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandPublic]:  # fmt: skip
    return [_public(c) for c in await _listing(pool, device, state, since, limit)]


@router.get("/v1/devices/{device_id}/commands", dependencies=[VIEWER])
async def list_device_commands(
    device_id: str, pool: SyncPoolDep, state: State | None = None, since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CommandPublic]:  # fmt: skip
    return [_public(c) for c in await _listing(pool, device_id, state, since, limit)]


@router.get("/v1/commands/{command_id}", responses=_REFUSALS, dependencies=[VIEWER])
async def get_command(command_id: str, pool: SyncPoolDep) -> CommandDetail:
    def run() -> tuple[store.Stored | None, list[Transition]]:
        with pool.connection() as conn:
            stored = store.get(conn, command_id)
            return stored, store.transitions(conn, command_id) if stored else []

    stored, log = await run_in_threadpool(run) if _uuid_like(command_id) else (None, [])
    if stored is None:
        raise HTTPException(404, f"unknown command {command_id}")
    return CommandDetail(**_public(stored.command).model_dump(), transitions=[_transition(t) for t in log])


@router.post("/v1/commands/{command_id}/cancel", responses=_REFUSALS)
async def cancel_command(
    actor: OperatorKey, command_id: str, request: Request, pool: SyncPoolDep, redis: RedisDep
) -> CommandPublic:
    if not _uuid_like(command_id):
        raise HTTPException(404, f"unknown command {command_id}")

    def run() -> Command:
        with pool.connection() as conn:
            conn.autocommit = True
            canceled = cancel(conn, redis, command_id, f"key:{actor.name}", datetime.now(UTC))
            keystore.record(conn, actor, "command.cancel", canceled.device_id, None,
                            _public(canceled).model_dump(mode="json"), route_of(request))  # fmt: skip
            return canceled

    try:
        return _public(await run_in_threadpool(run))
    except CommandRefused as exc:
        raise HTTPException(exc.status, exc.reason) from None


def _uuid_like(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
