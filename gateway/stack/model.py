"""Values that describe the local stack: its ports, its generated secrets and the URLs handed to services."""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from gateway.stack.errors import StackError

LOOPBACK = "127.0.0.1"
SERVICE_USER = "fleet-service"
COMMANDS_USER = "fleet-commands"
ADMIN_USER = "fleet-admin"
DATABASE = "fleet"
DATABASE_USER = "fleet"


@dataclass(frozen=True, slots=True)
class Ports:
    """Loopback ports; the defaults sit next to, not on, the system services' 1883/5432/6379."""

    mqtt: int = 18831
    postgres: int = 15433
    redis: int = 16380
    mqtts: int = 18883  # the broker's TLS listener

    def __post_init__(self) -> None:
        for field in fields(self):
            port = getattr(self, field.name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise StackError(f"{field.name} port must be an integer in 1..65535, got {port!r}")
        values = [getattr(self, field.name) for field in fields(self)]
        if len(set(values)) != len(values):
            raise StackError(f"the ports must differ, got {self}")


@dataclass(frozen=True, slots=True)
class StackUrls:
    """Where the services find the local servers, credentials included."""

    database_url: str
    mqtt_url: str
    redis_url: str
    mqtt_admin_url: str
    mqtt_commands_url: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """Secrets generated on the first `up()` and kept in the state folder (mode 600) from then on.

    URL-safe tokens, so they can be pasted into URLs without quoting.
    """

    postgres: str
    redis: str
    mqtt_service: str
    mqtt_commands: str
    mqtt_admin: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(*(secrets.token_urlsafe(24) for _ in fields(cls)))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Read the kept secrets, or create and keep new ones; a damaged file is an error, not a reset."""
        if path.exists():
            try:
                return cls(**json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                raise StackError(f"{path} is damaged ({exc}); delete the state folder to start afresh") from None
        created = cls.generate()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(asdict(created), out, indent=2)
        return created

    def urls(self, ports: Ports) -> StackUrls:
        mqtt = f"{LOOPBACK}:{ports.mqtt}"
        return StackUrls(
            database_url=f"postgresql://{DATABASE_USER}:{self.postgres}@{LOOPBACK}:{ports.postgres}/{DATABASE}",
            mqtt_url=f"mqtt://{SERVICE_USER}:{self.mqtt_service}@{mqtt}",
            redis_url=f"redis://:{self.redis}@{LOOPBACK}:{ports.redis}/0",
            mqtt_admin_url=f"mqtt://{ADMIN_USER}:{self.mqtt_admin}@{mqtt}",
            mqtt_commands_url=f"mqtt://{COMMANDS_USER}:{self.mqtt_commands}@{mqtt}",
        )


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A device's MQTT login: its username and client id are both its device id."""

    device_id: str
    password: str


def free_ports() -> Ports:
    """Loopback ports nobody listens on right now (for tests; another program may still take one)."""
    sockets = []
    try:
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        mqtt, postgres, redis, mqtts = (sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    return Ports(mqtt=mqtt, postgres=postgres, redis=redis, mqtts=mqtts)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0
