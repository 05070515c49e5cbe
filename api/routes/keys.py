"""API keys, for admins: create (the key is in the answer, once), list, revoke.

The same operations as `fleet keys create|list|revoke` on the server, through the same SQL
(`api.keystore`); each create and revoke is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import ADMIN, AdminKey, route_of
from api.db import SyncPoolDep
from api.keys import Role
from api.schemas import ApiKeyCreated, ApiKeyPublic

router = APIRouter(prefix="/v1/keys", tags=["keys"])

KEY_ID = r"^[0-9a-f]{12}$"


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="who or what holds the key")
    role: Role


@router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_key(actor: AdminKey, body: KeyCreate, pool: SyncPoolDep, request: Request) -> dict[str, Any]:
    """A new key; `key` is shown in this answer only (the server keeps its hash)."""

    def create() -> tuple[keystore.ApiKey, str]:
        with pool.connection() as conn:
            return keystore.create_key(conn, body.name, body.role, actor, route_of(request))

    key, token = await run_in_threadpool(create)
    return {**key.public(), "key": token}


@router.get("", dependencies=[ADMIN], response_model=list[ApiKeyPublic])
async def list_keys(pool: SyncPoolDep, include_revoked: bool = True) -> list[dict[str, Any]]:
    def read() -> list[keystore.ApiKey]:
        with pool.connection() as conn:
            return keystore.list_keys(conn, include_revoked=include_revoked)

    return [k.public() for k in await run_in_threadpool(read)]


@router.delete("/{key_id}", status_code=204)
async def revoke_key(actor: AdminKey, key_id: str, pool: SyncPoolDep, request: Request) -> None:
    """Revoke a key: refused from the next request on. Revoking a revoked key is no error."""

    def revoke() -> keystore.ApiKey | None:
        with pool.connection() as conn:
            return keystore.revoke_key(conn, key_id, actor, route_of(request))

    if await run_in_threadpool(revoke) is None:
        raise HTTPException(404, f"no key {key_id!r}")
