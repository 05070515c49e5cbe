"""Runtime configuration, read from `FLEET_*` environment variables (and an optional `.env`-style file).

Settings are built by the entry points (`main()`/`create_app()`), never at import time, so tests can
construct their own without touching the process environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DURABLE_COMMIT = "-c synchronous_commit=on"
"""Connection options of the workers that acknowledge a stream entry once its commit returns (ingest,
geofence): that commit must be on disk by then, whatever the server's default. With
`synchronous_commit = off` a crash of PostgreSQL loses the last fraction of a second of commits,
whose entries would already be gone from the stream."""


class Settings(BaseSettings):
    """Where the servers are and how the services behave.

    Any URL left unset is taken from the local stack that `fleet stack up` manages under `state_dir`;
    when all three are set the local stack is not started at all.
    """

    model_config = SettingsConfigDict(env_prefix="FLEET_", env_file=None, extra="ignore")

    state_dir: Path = Path(".fleet")
    database_url: str | None = None
    mqtt_url: str | None = None
    redis_url: str | None = None
    mqtt_admin_url: str | None = None  # account allowed to manage device credentials at the broker
    mqtt_commands_url: str | None = None  # the command service's account (fleet-commands)

    mqtt_port: int = 18831
    postgres_port: int = 15433
    redis_port: int = 16380

    api_host: str = "127.0.0.1"
    api_port: int = 8088

    max_payload_bytes: int = Field(default=16 * 1024, ge=256)
    future_tolerance_s: float = 300.0
    stream_key: str = "fleet:ingest"
    ingest_group: str = "ingest"
    ingest_batch_entries: int = 200

    @property
    def external(self) -> bool:
        return bool(self.database_url and self.mqtt_url and self.redis_url)


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """An `mqtt://user:password@host:port` URL taken apart once, for paho and aiomqtt alike."""

    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"MQTT URL must start with mqtt://, got {url!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
