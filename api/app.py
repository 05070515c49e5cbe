"""FastAPI application factory. Connections are made per app, never at import time.

Every route needs an API key of the role it declares (`api.auth`), except the health checks and
routes marked public. The interactive docs and the OpenAPI document are public by default: the
document holds no secret, and client generators and operators read it before they hold a key
(`ApiConfig.docs=False`, or `FLEET_API_DOCS=false`, turns them off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import check_declared, document_refusals
from api.db import read_pool, sync_pool
from api.deps import ApiConfig
from api.inputs import MAX_BODY_BYTES
from api.livefleet import LiveFleet
from api.metrics import RequestMetrics
from api.metrics import router as metrics_router
from api.routes import (
    activity,
    audit,
    commands,
    deadletters,
    devices,
    events,
    gbfs,
    health,
    imports,
    keys,
    live,
    mds,
    service_status,
    subscriptions,
    utilization,
    vehicles,
    webhooks,
    zones,
)
from api.routes import map as map_page
from kernel.livestate import LiveState

AUTH_POOL_SIZE = 4  # at most this many key lookups at once; more wait for a connection


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis.Redis.from_url(config.redis_url)
        app.state.config = config
        app.state.redis = client  # synchronous: for the shared helpers that run in threads
        app.state.aredis = aioredis.Redis.from_url(config.redis_url)
        app.state.live = LiveState(client)  # /v1/live's snapshot of a client's new box
        app.state.registry = None
        app.state.webhook_secret = config.webhook_secret
        app.state.webhook_tolerance_s = config.webhook_tolerance_s
        # Key lookups run on every request, in threads, on a pool of their own so writes never
        # starve them (`api.db` says why every connection here is pooled).
        app.state.auth_pool = sync_pool(config.database_url, "fleet api auth", AUTH_POOL_SIZE)
        app.state.pool = sync_pool(config.database_url, "fleet api writes")
        app.state.db = read_pool(config.database_url)
        await app.state.db.open(wait=False)
        app.state.fleet = LiveFleet(client, app.state.db, app.state.aredis)
        app.state.fleet.start()
        app.state.gbfs_cache = None
        if config.mqtt_admin_url:
            from provisioning.broker_admin import BrokerAdmin
            from provisioning.registry import DeviceRegistry

            app.state.registry = DeviceRegistry(
                config.database_url, config.redis_url, BrokerAdmin(config.mqtt_admin_url)
            )
        try:
            yield
        finally:
            await app.state.fleet.close()
            hub = getattr(app.state, "live_hub", None)
            if hub is not None:
                await hub.stop()
            if app.state.registry is not None:
                app.state.registry.close()
            await app.state.db.close()
            app.state.pool.close()
            app.state.auth_pool.close()
            await app.state.aredis.aclose()
            client.close()

    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Fleet gateway", version="0.1.0", lifespan=lifespan, **docs)  # type: ignore[arg-type]
    for module in (health, vehicles, devices, service_status, zones, events, utilization, activity, deadletters,
                   commands, subscriptions, keys, audit, webhooks, imports, gbfs, mds, live, map_page):  # fmt: skip
        app.include_router(module.router)
    app.include_router(metrics_router)
    app.mount("/map/static", StaticFiles(packages=[("api", "static")]), name="map-static")
    check_declared(app.routes)
    document_refusals(app.routes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(RequestMetrics)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with what a 422 really holds: a list of problems from input validation, or
    one sentence from a route's own checks (`from` after `to`, a malformed bounding box, ...)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if error is not None:
            listed = error["properties"]["detail"]
            error["properties"]["detail"] = {"anyOf": [listed, {"type": "string"}], "title": "Detail"}
        app.openapi_schema = schema
    return app.openapi_schema


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
