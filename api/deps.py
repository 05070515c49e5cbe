"""Shared dependencies, built once per app in `create_app` and reached through `request.app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request

from gateway.settings import redacted_repr
from ingest.livestate import LiveState


@dataclass(frozen=True, slots=True, repr=False)
class ApiConfig:
    """The API's own accounts (`fleet api` passes those of the `api` service)."""

    database_url: str
    redis_url: str
    mqtt_admin_url: str | None = None
    docs: bool = True  # serve /docs, /redoc and /openapi.json (public: the document holds no secret)
    map_tiles_url: str | None = None  # the map page's base-map tiles ({z}/{x}/{y}); none: plain background
    map_tiles_attribution: str = ""

    __repr__ = redacted_repr


def get_config(request: Request) -> ApiConfig:
    return request.app.state.config


def get_live(request: Request) -> LiveState:
    return request.app.state.live


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


ConfigDep = Annotated[ApiConfig, Depends(get_config)]
LiveDep = Annotated[LiveState, Depends(get_live)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
