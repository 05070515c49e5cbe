"""Shared dependencies, built once per app in `create_app` and reached through `request.app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import redis
from fastapi import Depends, Request

from api.mobility import SystemInfo
from kernel.settings import redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class ApiConfig:
    """The API's own accounts (`fleet api` passes those of the `api` service)."""

    database_url: str
    redis_url: str
    mqtt_admin_url: str | None = None
    docs: bool = True  # serve /docs, /redoc and /openapi.json (public: the document holds no secret)
    webhook_secret: bytes | None = None  # the shop's shared secret (api/routes/webhooks.py); None: 503
    webhook_tolerance_s: float = 300.0
    mqtt_url: str | None = None  # the broker, for /readyz (any account: only its answer is checked)
    system: SystemInfo = field(default_factory=SystemInfo)  # how the GBFS and MDS feeds name the system
    map_tiles_url: str | None = None  # the map page's base-map tiles ({z}/{x}/{y}); none: plain background
    map_tiles_attribution: str = ""

    __repr__ = redacted_repr


def get_config(request: Request) -> ApiConfig:
    return request.app.state.config


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


ConfigDep = Annotated[ApiConfig, Depends(get_config)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
