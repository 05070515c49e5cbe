"""FastAPI application factory. Connections are made per app, never at import time.

Every route needs an API key of the role it declares (`api.auth`), except the health checks and
routes marked public. The interactive docs and the OpenAPI document are public by default: the
document holds no secret, and client generators and operators read it before they hold a key
(`ApiConfig.docs=False`, or `FLEET_API_DOCS=false`, turns them off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import check_declared
from api.deps import ApiConfig
from api.inputs import MAX_BODY_BYTES
from api.routes import (
    audit,
    commands,
    devices,
    events,
    health,
    keys,
    live,
    service_status,
    utilization,
    vehicles,
    zones,
)
from api.routes import map as map_page
from ingest.livestate import LiveState

AUTH_POOL_SIZE = 4  # at most this many key lookups at once; more wait for a connection


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis.Redis.from_url(config.redis_url)
        app.state.config = config
        app.state.redis = client
        app.state.live = LiveState(client)
        app.state.registry = None
        # Key lookups run on every request: a new connection would cost its password exchange each
        # time (about 30 ms here); pooled ones answer in well under a millisecond.
        app.state.auth_pool = ConnectionPool(
            config.database_url,
            min_size=1,
            max_size=AUTH_POOL_SIZE,
            kwargs={"connect_timeout": 5, "application_name": "fleet api auth"},
            check=ConnectionPool.check_connection,
            open=False,
        )
        app.state.auth_pool.open(wait=False)
        if config.mqtt_admin_url:
            from gateway.broker_admin import BrokerAdmin
            from gateway.registry import DeviceRegistry

            app.state.registry = DeviceRegistry(
                config.database_url, config.redis_url, BrokerAdmin(config.mqtt_admin_url)
            )
        try:
            yield
        finally:
            hub = getattr(app.state, "live_hub", None)
            if hub is not None:
                await hub.stop()
            if app.state.registry is not None:
                app.state.registry.close()
            app.state.auth_pool.close()
            client.close()

    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Fleet gateway", version="0.1.0", lifespan=lifespan, **docs)  # type: ignore[arg-type]
    for module in (health, vehicles, devices, service_status, zones, events, utilization, commands, keys, audit,
                   live, map_page):  # fmt: skip
        app.include_router(module.router)
    app.mount("/map/static", StaticFiles(packages=[("api", "static")]), name="map-static")
    check_declared(app.routes)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    return app


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a 413, by their Content-Length or while they stream
    in, so no single call can make the API hold an unbounded body in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, max_bytes: int) -> None:
    body = b'{"detail":"request body over %d bytes"}' % max_bytes
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
