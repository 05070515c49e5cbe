"""The API's database and Redis connections: pools opened once per app, reached through dependencies.

Reads go through an async pool (`DbDep`) and redis-py's asyncio client (`AsyncRedisDep`), so a slow
query holds a connection, never the event loop. Writes reuse the shared store helpers, which are
synchronous (`geofence.store`, `api.keystore`, `commands.issue`): they run in the thread pool on a
connection of the synchronous pool (`SyncPoolDep`). Either way no request opens a connection of its
own: a new PostgreSQL connection costs its password exchange, about 30 ms here.
"""

from __future__ import annotations

from typing import Annotated

import psycopg
import redis.asyncio as aioredis
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool, ConnectionPool

READ_POOL_SIZE = 8  # concurrent reads; more wait for a connection (at most POOL_TIMEOUT_S)
WRITE_POOL_SIZE = 4  # writes run in threads: no more of them at once than this
POOL_TIMEOUT_S = 5.0


def _reset(conn: psycopg.Connection) -> None:
    """A route may switch a connection to autocommit (command issuing does): back to the default."""
    conn.autocommit = False


def sync_pool(database_url: str, name: str, size: int = WRITE_POOL_SIZE) -> ConnectionPool:
    pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"connect_timeout": 5, "application_name": name},
        check=ConnectionPool.check_connection,
        reset=_reset,
        timeout=POOL_TIMEOUT_S,
        open=False,
    )
    pool.open(wait=False)
    return pool


async def _async_reset(conn: psycopg.AsyncConnection) -> None:
    await conn.set_autocommit(False)


def read_pool(database_url: str) -> AsyncConnectionPool:
    """Opened by the caller (`await pool.open()`), inside the running loop."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=READ_POOL_SIZE,
        kwargs={"connect_timeout": 5, "application_name": "fleet api"},
        check=AsyncConnectionPool.check_connection,
        reset=_async_reset,
        timeout=POOL_TIMEOUT_S,
        open=False,
    )


def get_db(request: Request) -> AsyncConnectionPool:
    return request.app.state.db


def get_sync_pool(request: Request) -> ConnectionPool:
    return request.app.state.pool


def get_async_redis(request: Request) -> aioredis.Redis:
    return request.app.state.aredis


DbDep = Annotated[AsyncConnectionPool, Depends(get_db)]
SyncPoolDep = Annotated[ConnectionPool, Depends(get_sync_pool)]
AsyncRedisDep = Annotated[aioredis.Redis, Depends(get_async_redis)]


async def fetch(pool: AsyncConnectionPool, sql: str, params: object = None) -> list[tuple[object, ...]]:
    """All rows of one read-only query, on a pooled connection."""
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params)  # type: ignore[arg-type]
        return await cur.fetchall()
