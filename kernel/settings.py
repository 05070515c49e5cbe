"""Runtime configuration, read from `FLEET_*` environment variables (and an optional `.env`-style file).

Settings are built by the entry points (`main()`/`create_app()`), never at import time, so tests can
construct their own without touching the process environment.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernel import keys

DURABLE_COMMIT = "-c synchronous_commit=on"
"""Connection options of the workers that acknowledge a stream entry once its commit returns (ingest,
geofence): that commit must be on disk by then, whatever the server's default. With
`synchronous_commit = off` a crash of PostgreSQL loses the last fraction of a second of commits,
whose entries would already be gone from the stream."""


# The local stack's loopback ports, next to (not on) the system services' 1883/5432/6379: the one place
# they are written (the stack's `Ports` takes its defaults from here).
MQTT_PORT = 18831
MQTTS_PORT = 18883  # the broker's TLS listener
POSTGRES_PORT = 15433
REDIS_PORT = 16380


class Settings(BaseSettings):
    """Where the servers are and how the services behave.

    Any URL left unset is taken from the local stack that `fleet stack up` manages under `state_dir`;
    when all three are set the local stack is not started at all.
    """

    model_config = SettingsConfigDict(env_prefix="FLEET_", env_file=None, extra="ignore")

    @classmethod
    def at(cls, state_dir: Path | None) -> Settings:
        """The settings from the environment, with the state folder a command line named (if any)."""
        settings = cls()
        return settings if state_dir is None else settings.model_copy(update={"state_dir": state_dir})

    state_dir: Path = Path(".fleet")
    database_url: str | None = None
    mqtt_url: str | None = None
    redis_url: str | None = None
    mqtt_admin_url: str | None = None  # account allowed to manage device credentials at the broker
    # CA that signs the broker's certificate, for mqtts:// URLs without `?cafile=` (local stack: its own CA)
    mqtt_ca_file: Path | None = None
    # The local stack's plain listener; off, the services are handed mqtts:// URLs (TLS stays on anyway)
    mqtt_plain: bool = True

    # Each service's own accounts (FLEET_INGEST_DATABASE_URL, ...): with the local stack, its
    # least-privileged role and ACL user; set one to override it, or leave it unset to use the
    # general URL above when that is set (kernel/endpoints.py).
    gateway_redis_url: str | None = None
    ingest_database_url: str | None = None
    ingest_redis_url: str | None = None
    geofence_database_url: str | None = None
    geofence_redis_url: str | None = None
    commands_database_url: str | None = None
    commands_redis_url: str | None = None
    lockout_database_url: str | None = None
    lockout_redis_url: str | None = None
    api_database_url: str | None = None
    api_redis_url: str | None = None
    notify_database_url: str | None = None  # the reminder and outbox sender (fleet notify)
    mqtt_commands_url: str | None = None  # the command service's account (fleet-commands)

    mqtt_port: int = MQTT_PORT
    mqtts_port: int = MQTTS_PORT
    postgres_port: int = POSTGRES_PORT
    redis_port: int = REDIS_PORT

    api_host: str = "127.0.0.1"
    api_port: int = 8088
    api_tls_cert: Path | None = None  # with api_tls_key: the API serves HTTPS
    api_tls_key: Path | None = None
    api_docs: bool = True  # /docs, /redoc and /openapi.json (public; the document holds no secret)
    # The map page's base map: a tile URL template ({z}/{x}/{y}) and its attribution; none by default
    # (a plain background: the page needs no outside address)
    map_tiles_url: str | None = None
    map_tiles_attribution: str = ""

    max_payload_bytes: int = Field(default=16 * 1024, ge=256)
    future_tolerance_s: float = 300.0
    stream_key: str = keys.INGEST_STREAM
    ingest_group: str = "ingest"
    ingest_batch_entries: int = 200
    # what fleet:positions keeps for the geofence stage; beyond it the oldest are dropped and counted
    positions_max_bytes: int = Field(default=512 * 2**20, ge=1)

    @property
    def external(self) -> bool:
        return bool(self.database_url and self.mqtt_url and self.redis_url)

    def service_url(self, service: str, kind: str) -> str | None:
        """A service's URL of one kind ("database", "redis") as configured: its own setting, else the
        general one, else None (then the local stack's account for that service is used)."""
        own: str | None = getattr(self, f"{service}_{kind}_url", None)
        general: str | None = getattr(self, f"{kind}_url")
        return own or general


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """An `mqtt://user:password@host:port` or `mqtts://...?cafile=/path/ca.crt` URL taken apart once,
    for our own session, paho and aiomqtt alike.

    `mqtts` is MQTT over TLS (default port 8883). The broker's certificate is checked against
    `ca_file` (the `cafile` query, else `default_ca_file`), or against the system's trusted CAs when
    neither is given; its name must match `host`.
    """

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, default_ca_file: str | None = None) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {redact(url)!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        query = parse_qs(parts.query)
        ca_file = query["cafile"][-1] if "cafile" in query else default_ca_file
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=ca_file if tls else None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that checks the broker's certificate and name (None for plain MQTT)."""
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read the MQTT CA file {self.ca_file}: {exc}") from None


def with_ca_file(url: str, ca_file: str | Path | None) -> str:
    """`url` with `?cafile=` added when it is an mqtts URL that names none (others are returned as is)."""
    parts = urlsplit(url)
    if ca_file is None or parts.scheme not in ("mqtts", "ssl") or "cafile" in parse_qs(parts.query):
        return url
    query = "&".join(q for q in (parts.query, urlencode({"cafile": str(ca_file)}, safe="/")) if q)
    return urlunsplit(parts._replace(query=query))


def redact(url: str) -> str:
    """`url` with its password replaced by `***`, for logs, messages and `fleet stack up`: every URL
    we show passes through here. The user name stays (it says which account); anything that does
    not parse as a URL with credentials is returned as it is."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None and parts.username is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redacted_repr(obj: object) -> str:
    """A dataclass's repr with the password of every URL in it redacted, so that a logged object, a
    failed assertion or a traceback's locals show which accounts, never their secrets."""

    def shown(value: object) -> str:
        if isinstance(value, str):
            return repr(redact(value))
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k!r}: {shown(v)}" for k, v in value.items()) + "}"
        return repr(value)

    names = [f.name for f in fields(obj) if f.repr]  # type: ignore[arg-type]
    return f"{type(obj).__name__}({', '.join(f'{n}={shown(getattr(obj, n))}' for n in names)})"
