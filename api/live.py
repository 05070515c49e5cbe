"""The `/v1/live` fan-out: one Redis subscriber per API process, one bounded feed per client.

The subscriber reads `fleet:live` (vehicle states from ingest), `fleet:events` (zone events and theft
suspicions) and `fleet:commands` (command transitions) and, every `TICK_S`, hands what it read to
every client's `ClientFeed` (`api.livefeed`, pure): an offer is a few numpy comparisons and dict
stores, never a wait. Each client has its own sender task that takes its feed whenever its socket is
free; a slow client's feed coalesces to the newest state per vehicle, so it never holds the others
back and never grows past the fleet's size. The subscriber starts with the first client and stops
with the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.livefeed import Box, ClientFeed, Tick, TickBuilder, choose
from kernel import keys
from kernel.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

TICK_S = 0.1  # at most ten messages a second per client; also the longest an update waits here
RETRY_S = 1.0  # after Redis refused or went away
CHANNELS = (keys.LIVE_CHANNEL, keys.EVENTS_CHANNEL, keys.COMMANDS_CHANNEL)


@dataclass(eq=False)
class LiveClient:
    """One connected socket: its feed and the flag that wakes its sender."""

    feed: ClientFeed
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0  # messages sent, for the benchmark and tests


@dataclass
class HubStats:
    ticks: int = 0
    updates: int = 0  # positions, events and transitions read from Redis
    malformed: int = 0


class LiveHub:
    """Owns the subscriber task and the set of clients of one API process."""

    def __init__(self, redis_url: str, tick_s: float = TICK_S) -> None:
        self._redis_url = redis_url
        self._tick_s = tick_s
        self._clients: set[LiveClient] = set()
        self._task: asyncio.Task[None] | None = None
        self._warn = RateLimitedLog(log)
        self.stats = HubStats()

    def join(self, box: Box) -> LiveClient:
        client = LiveClient(ClientFeed(box))
        self._clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="live-subscriber")
        return client

    async def leave(self, client: LiveClient) -> None:
        self._clients.discard(client)
        if not self._clients and self._task is not None:
            await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def offer(self, client: LiveClient, tick: Tick) -> None:
        """Give one client a tick of its own (the fleet snapshot when it sets its box), sent even when
        empty: the client learns its box is in force."""
        client.feed.offer(tick)
        client.feed.due = True
        client.wake.set()

    async def _run(self) -> None:
        while self._clients:  # a hub whose clients are all gone (or never came) stops retrying
            try:
                await self._subscribe_and_fan_out()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._warn.warning("redis", "live: subscriber lost Redis (%s); retrying", exc)
                await asyncio.sleep(RETRY_S)

    async def _subscribe_and_fan_out(self) -> None:
        client = aioredis.Redis.from_url(self._redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        builder = TickBuilder()
        readers: dict[bytes, Callable[[bytes], None]] = {
            keys.LIVE_CHANNEL.encode(): builder.add_states,
            keys.EVENTS_CHANNEL.encode(): builder.add_event,
            keys.COMMANDS_CHANNEL.encode(): builder.add_commands,
        }
        try:
            await pubsub.subscribe(*CHANNELS)
            next_tick = time.monotonic() + self._tick_s
            while True:
                wait = next_tick - time.monotonic()
                if wait > 0:
                    message = await pubsub.get_message(timeout=wait)
                    if message is not None and message["type"] == "message":
                        readers[message["channel"]](message["data"])
                    continue
                next_tick = time.monotonic() + self._tick_s
                self._fan_out(builder.take())
                self.stats.malformed = builder.malformed
        finally:
            await pubsub.aclose()
            await client.aclose()

    def _fan_out(self, tick: Tick) -> None:
        self.stats.ticks += 1
        if not len(tick):
            return
        self.stats.updates += len(tick)
        clients = list(self._clients)
        shares = choose([c.feed.box for c in clients], tick)
        for client, chosen in zip(clients, shares, strict=True):
            client.feed.offer(tick, chosen)
            client.wake.set()


async def send_loop(client: LiveClient, send: Callable[[str], Awaitable[None]]) -> None:
    """Send the client's feed whenever the socket is free; what arrives meanwhile coalesces."""
    while True:
        await client.wake.wait()
        client.wake.clear()
        message = client.feed.take()
        if message is not None:
            await send(message.decode())
            client.sent += 1


__all__ = ["CHANNELS", "TICK_S", "LiveClient", "LiveHub", "send_loop"]
