"""The API's copy of the live fleet (`api.fleetview.Snapshot`), refreshed from Redis in the background.

A request takes the current snapshot when it is at most `FRESH_S` old. An older one is still served
while a refresh runs (one at a time), as long as it is at most `STALE_S` old; past that, or with no
snapshot yet, the request waits for the refresh. So answers are never more than `STALE_S` behind
Redis, and under steady load about `FRESH_S` plus one refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from api import fleetview
from gateway import keys

FRESH_S = 1.0
STALE_S = 5.0
_MAINTENANCE = (
    "SELECT device_id FROM (SELECT DISTINCT ON (device_id) device_id, status FROM device_service"
    " WHERE time <= now() ORDER BY device_id, time DESC) s WHERE status <> 'in_service'"
)


class LiveFleet:
    def __init__(self, client: aioredis.Redis, db: AsyncConnectionPool) -> None:
        self._redis = client
        self._db = db
        self._snapshot: fleetview.Snapshot | None = None
        self._refresh: asyncio.Task[fleetview.Snapshot] | None = None

    async def snapshot(self) -> fleetview.Snapshot:
        now = time.time()
        current = self._snapshot
        if current is not None and now - current.taken_at <= FRESH_S:
            return current
        if self._refresh is None or self._refresh.done():
            if self._refresh is not None and not self._refresh.cancelled():
                self._refresh.exception()  # a failed refresh was answered to its waiters: seen
            self._refresh = asyncio.create_task(self._rebuild())
        if current is not None and now - current.taken_at <= STALE_S:
            return current
        return await asyncio.shield(self._refresh)

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh

    async def _rebuild(self) -> fleetview.Snapshot:
        taken_at = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.VEHICLES)
            pipe.hgetall(keys.ONLINE)
            states, online = await pipe.execute()
        async with self._db.connection() as conn:
            rows = await (await conn.execute(_MAINTENANCE)).fetchall()
        maintenance = frozenset(r[0] for r in rows)
        # The build is CPU work (reused entries make it short); in a thread so requests go on.
        snapshot = await asyncio.to_thread(fleetview.build, states, online, maintenance, self._snapshot, taken_at)
        self._snapshot = snapshot
        return snapshot
