"""The API's copy of the live fleet (`api.fleetview.Snapshot`), refreshed from Redis in the background.

A request takes the current snapshot when it is at most `FRESH_S` old (a refresh reads the whole
fleet from Redis, tens of MB at 100,000 vehicles: every 2 s is a fair share of two cores). An older one is still served
while a refresh runs (one at a time), as long as it is at most `STALE_S` old; past that, or with no
snapshot yet, the request waits for the refresh. So answers are never more than `STALE_S` behind
Redis, and under steady load about `FRESH_S` plus one refresh. `STALE_S` is generous on purpose: a
refresh of 100,000 vehicles on a busy 2-core machine took seconds, and a request should not wait
for one while a snapshot a few seconds old is at hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import redis
from psycopg_pool import AsyncConnectionPool

from api import fleetview
from gateway import keys

FRESH_S = 2.0
STALE_S = 30.0
BODIES = 16
_MAINTENANCE = (
    "SELECT device_id FROM (SELECT DISTINCT ON (device_id) device_id, status FROM device_service"
    " WHERE time <= now() ORDER BY device_id, time DESC) s WHERE status <> 'in_service'"
)


class LiveFleet:
    def __init__(self, client: redis.Redis, db: AsyncConnectionPool) -> None:
        self._redis = client
        self._db = db
        self._snapshot: fleetview.Snapshot | None = None
        self._refresh: asyncio.Task[fleetview.Snapshot] | None = None
        self._bodies: dict[tuple[object, ...], bytes] = {}  # answers made from the current snapshot
        self._whole: tuple[float, bytes] | None = None

    def cached(self, snapshot: fleetview.Snapshot, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        """An answer built once per snapshot and query: a map polling the whole fleet every second
        costs one join of its features per snapshot, not one per client. At most `BODIES` are kept,
        all of the newest snapshot."""
        full_key = (snapshot.taken_at, *key)
        body = self._bodies.get(full_key)
        if body is None:
            if len(self._bodies) >= BODIES or any(k[0] != snapshot.taken_at for k in self._bodies):
                self._bodies = {k: v for k, v in self._bodies.items() if k[0] == snapshot.taken_at}
                while len(self._bodies) >= BODIES:
                    self._bodies.pop(next(iter(self._bodies)))
            body = self._bodies[full_key] = make()
        return body

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
        async with self._db.connection() as conn:
            rows = await (await conn.execute(_MAINTENANCE)).fetchall()
        maintenance = frozenset(r[0] for r in rows)
        # Reading 100,000 states (tens of MB) and building is CPU work: in a thread, so the event loop
        # keeps answering from the current snapshot meanwhile.
        snapshot = await asyncio.to_thread(self._read_and_build, maintenance)
        self._snapshot = snapshot
        return snapshot

    def _read_and_build(self, maintenance: frozenset[str]) -> fleetview.Snapshot:
        taken_at = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.VEHICLES)
        pipe.hgetall(keys.ONLINE)
        states, online = pipe.execute()
        snapshot = fleetview.build(states, online, maintenance, self._snapshot, taken_at)
        # the whole fleet, unfiltered: what every map loads first, made here rather than in a request
        self._whole = (snapshot.taken_at, fleetview.collection(snapshot, range(len(snapshot)), None))
        return snapshot

    def whole(self, snapshot: fleetview.Snapshot) -> bytes | None:
        """The unfiltered collection of `snapshot`, when it was made with it."""
        whole = self._whole
        return whole[1] if whole is not None and whole[0] == snapshot.taken_at else None
