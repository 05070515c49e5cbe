"""The API's own Prometheus metrics, and `/metrics` (behind a viewer key, like every read route).

Requests are counted and timed by route template (never the raw path: ids would make a series
each). A scrape also reads each pipeline stage's stream lag from Redis, so one scrape of the API
shows how far behind the whole pipeline is; the services' own metrics are on their
`--metrics-port` (`kernel/metrics.py`).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import VIEWER
from api.db import AsyncRedisDep
from kernel.metrics import STAGES, group_lag

REQUESTS = Counter("fleet_api_requests", "API requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "fleet_api_request_seconds", "API request time, to the end of the answer", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
)  # fmt: skip
STAGE_LAG = Gauge("fleet_api_stream_lag", "Stream entries not yet delivered to a stage, read by the API", ["stage"])

router = APIRouter(tags=["health"])


_TEXT = {200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}}


@router.get("/metrics", dependencies=[VIEWER], response_class=Response, responses=_TEXT)
async def metrics(client: AsyncRedisDep) -> Response:
    for stage, (stream, group) in STAGES.items():
        try:
            lag, _ = group_lag(await client.xinfo_groups(stream), group)
        except Exception:  # no stream yet, or Redis away: the gauge keeps its last value
            continue
        if lag is not None:
            STAGE_LAG.labels(stage).set(lag)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)
