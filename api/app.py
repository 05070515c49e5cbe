"""FastAPI application factory. Connections are made per app, never at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from api.deps import ApiConfig
from api.routes import commands, devices, events, health, service_status, utilization, vehicles, zones
from ingest.livestate import LiveState


def create_app(config: ApiConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis.Redis.from_url(config.redis_url)
        app.state.config = config
        app.state.redis = client
        app.state.live = LiveState(client)
        app.state.registry = None
        if config.mqtt_admin_url:
            from gateway.broker_admin import BrokerAdmin
            from gateway.registry import DeviceRegistry

            app.state.registry = DeviceRegistry(
                config.database_url, config.redis_url, BrokerAdmin(config.mqtt_admin_url)
            )
        try:
            yield
        finally:
            if app.state.registry is not None:
                app.state.registry.close()
            client.close()

    app = FastAPI(title="Fleet gateway", version="0.1.0", lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(vehicles.router)
    app.include_router(devices.router)
    app.include_router(service_status.router)
    app.include_router(zones.router)
    app.include_router(events.router)
    app.include_router(utilization.router)
    app.include_router(commands.router)
    return app
