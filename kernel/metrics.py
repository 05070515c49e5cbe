"""Every Prometheus metric of the pipeline services, defined in this one module.

The gateway, ingest, geofence and command services each serve these on a port of their own when
started with `--metrics-port N` (off by default: `serve`); the API has its own request metrics in
`api/metrics.py` and republishes the stage lags at its `/metrics`. Every metric here carries a
`service` label (or an `outcome` for commands and reminders), so a process shows only what it does.

- `fleet_messages_in_total{service}`: messages (gateway: MQTT) or records (ingest, geofence) taken in.
- `fleet_dead_letters_total{service,reason}`: dead letters by reason (gateway: made; ingest: stored,
  the gateway's included; geofence: refused by the database).
- `fleet_batch_size{service}`: messages or records per batch written.
- `fleet_commit_seconds{service}`: time to make a batch durable (gateway: XADD; ingest, geofence: COMMIT).
- `fleet_stream_lag{stage}`, `fleet_stream_pending{stage}`: entries not yet delivered to a stage's
  consumer group, and delivered but not acknowledged (read from Redis at each scrape).
- `fleet_command_outcomes_total{outcome}`: commands reaching an end state (confirmed, rejected, ...).
- `fleet_reminder_outcomes_total{outcome}`: subscription reminders by outcome (for the subscription service).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kernel import keys

log = logging.getLogger(__name__)

# stage → (stream, consumer group): the hand-offs whose lag says how far behind a stage is
STAGES: Mapping[str, tuple[str, str]] = {
    "ingest": (keys.INGEST_STREAM, "ingest"),
    "geofence": (keys.POSITIONS_STREAM, "geofence"),
    "commands": (keys.CMD_ACKS_STREAM, "commands"),
}

MESSAGES_IN = Counter("fleet_messages_in", "Messages (gateway) or records (ingest, geofence) taken in", ["service"])
DEAD_LETTERS = Counter("fleet_dead_letters", "Dead letters made, by reason", ["service", "reason"])
BATCH_SIZE = Histogram(
    "fleet_batch_size", "Messages or records per batch written", ["service"],
    buckets=(1, 10, 100, 500, 1_000, 5_000, 10_000, 50_000),
)  # fmt: skip
COMMIT_SECONDS = Histogram(
    "fleet_commit_seconds", "Time to make one batch durable (XADD or COMMIT)", ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip
COMMAND_OUTCOMES = Counter("fleet_command_outcomes", "Commands reaching an end state", ["outcome"])
REMINDER_OUTCOMES = Counter("fleet_reminder_outcomes", "Subscription reminders by outcome", ["outcome"])


def group_lag(groups: list[Mapping[Any, Any]], group: str) -> tuple[int | None, int | None]:
    """(lag, pending) of `group` in an XINFO GROUPS answer (pure); (None, None) when it is not there.
    Redis reports no lag (nil) when it cannot tell, after entries were deleted out of order."""
    for info in groups:
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
        name = fields.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag, pending = fields.get("lag"), fields.get("pending")
            return (int(lag) if lag is not None else None), (int(pending) if pending is not None else None)
    return None, None


class StreamLag(Collector):
    """The lag of some stages, read from Redis at each scrape (a failed read leaves them out)."""

    def __init__(self, client: Any, stages: list[str]) -> None:
        self._redis = client
        self._stages = stages

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("fleet_stream_lag", "Stream entries not yet delivered to the stage", labels=["stage"])
        pending = GaugeMetricFamily("fleet_stream_pending", "Delivered, not yet acknowledged", labels=["stage"])
        for stage in self._stages:
            stream, group = STAGES[stage]
            try:
                groups = self._redis.xinfo_groups(stream)
            except Exception as exc:  # a missing stream, an unreachable Redis: no sample, never a failed scrape
                log.debug("stream lag of %s unavailable: %s", stage, exc)
                continue
            value, waiting = group_lag(groups, group)
            if value is not None:
                lag.add_metric([stage], value)
            if waiting is not None:
                pending.add_metric([stage], waiting)
        yield lag
        yield pending


def serve(port: int | None, redis_url: str | None = None, stages: list[str] | None = None) -> None:
    """Serve the metrics on `port` (all addresses; nothing when None or 0), with the lag of `stages`
    read through `redis_url`. The server is a daemon thread of the service process."""
    if not port:
        return
    if redis_url and stages:
        import redis

        REGISTRY.register(StreamLag(redis.Redis.from_url(redis_url, socket_timeout=2), stages))
    start_http_server(port)
    log.info("metrics on :%d/metrics", port)
