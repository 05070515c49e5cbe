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
import logging
import time
from collections.abc import Callable

import orjson
import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from api import fleetview
from kernel import keys

log = logging.getLogger(__name__)

FRESH_S = 2.0
RESYNC_S = 60.0  # the whole hash is read again at least this often, whatever was published
MAX_MESSAGES = 20_000  # published batches kept between two refreshes (ingest publishes one per batch)
STALE_S = 30.0
BODIES = 16
_MAINTENANCE = (
    "SELECT device_id FROM (SELECT DISTINCT ON (device_id) device_id, status FROM device_service"
    " WHERE time <= now() ORDER BY device_id, time DESC) s WHERE status <> 'in_service'"
)


class LiveFleet:
    """`client` reads the hashes (in a thread); `follow`, when given, subscribes to `fleet:live`, so a
    refresh parses only the states published since the last one instead of the whole hash."""

    def __init__(self, client: redis.Redis, db: AsyncConnectionPool, follow: aioredis.Redis | None = None) -> None:
        self._redis = client
        self._db = db
        self._follow_client = follow
        self._follower: asyncio.Task[None] | None = None
        self._messages: list[bytes] = []  # fleet:live messages since the last refresh took them
        self._following = False  # subscribed, and nothing missed since the last full read
        self._resynced_at = 0.0
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

    def start(self) -> None:
        if self._follow_client is not None:
            self._follower = asyncio.create_task(self._follow(self._follow_client))

    async def close(self) -> None:
        for task in (self._refresh, self._follower):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _follow(self, client: aioredis.Redis) -> None:
        """Collect every live-state change ingest publishes; on any trouble, resubscribe, and have
        the next refresh read the whole hash (what was published meanwhile is lost)."""
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(keys.LIVE_CHANNEL)
                self._resynced_at = 0.0  # changes before the subscription were not seen
                self._following = True
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    if len(self._messages) >= MAX_MESSAGES:  # nobody asked for a while: read it all next time
                        self._messages.clear()
                        self._resynced_at = 0.0
                    self._messages.append(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live-state subscription lost (%s): resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                self._following = False
                await pubsub.aclose()

    async def _rebuild(self) -> fleetview.Snapshot:
        async with self._db.connection() as conn:
            rows = await (await conn.execute(_MAINTENANCE)).fetchall()
        maintenance = frozenset(r[0] for r in rows)
        messages, self._messages = self._messages, []
        incremental = self._following and time.time() - self._resynced_at < RESYNC_S
        # Reading 100,000 states (tens of MB) and building is CPU work: in a thread, so the event loop
        # keeps answering from the current snapshot meanwhile.
        snapshot = await asyncio.to_thread(self._read_and_build, maintenance, messages if incremental else None)
        self._snapshot = snapshot
        return snapshot

    def _read_and_build(self, maintenance: frozenset[str], messages: list[bytes] | None) -> fleetview.Snapshot:
        taken_at = time.time()
        previous, snapshot = self._snapshot, None
        if messages is not None and previous is not None:
            snapshot = fleetview.apply(previous, _changes(messages), self._redis.hgetall(keys.ONLINE), maintenance,
                                       taken_at)  # fmt: skip
        if snapshot is None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys.VEHICLES)
            pipe.hgetall(keys.ONLINE)
            states, online = pipe.execute()
            snapshot = fleetview.build(states, online, maintenance, previous, taken_at)
            self._resynced_at = taken_at
        # the whole fleet, unfiltered: what every map loads first, made here rather than in a request
        whole = self._whole
        if previous is not None and snapshot.features is previous.features and whole is not None:
            self._whole = (snapshot.taken_at, whole[1])  # nothing changed: the same bytes
        else:
            self._whole = (snapshot.taken_at, fleetview.collection(snapshot, range(len(snapshot)), None))
        return snapshot

    def whole(self, snapshot: fleetview.Snapshot) -> bytes | None:
        """The unfiltered collection of `snapshot`, when it was made with it."""
        whole = self._whole
        return whole[1] if whole is not None and whole[0] == snapshot.taken_at else None


def _changes(messages: list[bytes]) -> dict[str, bytes]:
    """id → newest state JSON from `fleet:live` messages (each a JSON array of states), in order."""
    changed: dict[str, bytes] = {}
    for data in messages:
        try:
            states = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for state in states if isinstance(states, list) else ():
            if isinstance(state, dict) and isinstance(state.get("id"), str):
                changed[state["id"]] = orjson.dumps(state)
    return changed
