"""Values that describe the local stack: its ports, its generated secrets and the URLs handed to services."""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from gateway.secretfile import create_private, write_private
from gateway.settings import redacted_repr
from gateway.stack.errors import StackError

LOOPBACK = "127.0.0.1"
SERVICE_USER = "fleet-service"
COMMANDS_USER = "fleet-commands"
ADMIN_USER = "fleet-admin"
DATABASE = "fleet"
DATABASE_USER = "fleet"  # the owner: creates the schema (migrations); no service connects as it

# The services, each with its own accounts. The gateway keeps no database connection.
SERVICES = ("gateway", "ingest", "geofence", "commands", "lockout", "api")
DATABASE_SERVICES = ("ingest", "geofence", "commands", "lockout", "api")
REDIS_SERVICES = SERVICES


def database_role(service: str) -> str:
    """The PostgreSQL login role of a service: `fleet_ingest`, ... (no quoting needed in SQL)."""
    return f"fleet_{service}"


def redis_user(service: str) -> str:
    """The Redis ACL user of a service: `fleet-ingest`, ..."""
    return f"fleet-{service}"


@dataclass(frozen=True, slots=True)
class Ports:
    """Loopback ports; the defaults sit next to, not on, the system services' 1883/5432/6379."""

    mqtt: int = 18831
    postgres: int = 15433
    redis: int = 16380
    mqtts: int = 18883  # the broker's TLS listener

    def __post_init__(self) -> None:
        for each in fields(self):
            port = getattr(self, each.name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise StackError(f"{each.name} port must be an integer in 1..65535, got {port!r}")
        values = [getattr(self, f.name) for f in fields(self)]
        if len(set(values)) != len(values):
            raise StackError(f"the ports must differ, got {self}")


@dataclass(frozen=True, slots=True, repr=False)
class ServiceUrls:
    """What one service connects with: its own accounts only (None where it needs no such server)."""

    database_url: str | None = None
    redis_url: str | None = None
    mqtt_url: str | None = None
    mqtt_admin_url: str | None = None

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class StackUrls:
    """Where the services find the local servers, credentials included.

    The first five are the administrative accounts (the database owner that runs migrations, Redis's
    admin, the broker's accounts); `services` holds each service's own, least-privileged ones.
    """

    database_url: str
    mqtt_url: str
    redis_url: str
    mqtt_admin_url: str
    mqtt_commands_url: str
    services: dict[str, ServiceUrls] = field(default_factory=dict)

    __repr__ = redacted_repr


def _token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """Secrets generated on the first `up()` and kept in the state folder (mode 600) from then on.

    URL-safe tokens, so they can be pasted into URLs without quoting. `database_roles` and
    `redis_users` map a service name to the password of its own PostgreSQL role and Redis ACL user.
    Its repr shows none of them.
    """

    postgres: str
    redis: str
    mqtt_service: str
    mqtt_commands: str
    mqtt_admin: str
    database_roles: dict[str, str] = field(default_factory=dict)
    redis_users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> Credentials:
        return cls(*(_token() for _ in range(5))).completed()

    def completed(self) -> Credentials:
        """These secrets plus new ones for any service account missing (a state folder from an older
        version, which had one database and one Redis password for everything)."""
        roles = {s: self.database_roles.get(s) or _token() for s in DATABASE_SERVICES}
        users = {s: self.redis_users.get(s) or _token() for s in REDIS_SERVICES}
        return replace(self, database_roles=roles, redis_users=users)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Read the kept secrets as they are (no writing: services read them while `up` may run)."""
        try:
            found = cls(**json.loads(path.read_bytes()))
            if not all(isinstance(v, str) for v in (*found.database_roles.values(), *found.redis_users.values())):
                raise TypeError("service passwords must be strings")
        except (ValueError, TypeError, AttributeError) as exc:
            raise StackError(f"{path} is damaged ({exc}); delete the state folder to start afresh") from None
        return found

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Read the kept secrets, or create and keep new ones; a damaged file is an error, not a reset.
        Accounts missing from an older file are added to it. Call it under the stack's lock."""
        try:
            found = cls.load(path)
        except FileNotFoundError:
            created = cls.generate()
            try:
                create_private(path, created.to_json())
            except FileExistsError:  # another process created it just now: use theirs
                return cls.load_or_create(path)
            return created
        completed = found.completed()
        if completed != found:
            write_private(path, completed.to_json())
        return completed

    @property
    def complete(self) -> bool:
        return set(self.database_roles) >= set(DATABASE_SERVICES) and set(self.redis_users) >= set(REDIS_SERVICES)

    def __repr__(self) -> str:
        return "Credentials(<secret>)"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    def urls(self, ports: Ports) -> StackUrls:
        mqtt = f"{LOOPBACK}:{ports.mqtt}"

        def database(user: str, password: str) -> str:
            return f"postgresql://{user}:{password}@{LOOPBACK}:{ports.postgres}/{DATABASE}"

        def redis(user: str, password: str) -> str:
            return f"redis://{user}:{password}@{LOOPBACK}:{ports.redis}/0"

        mqtt_service = f"mqtt://{SERVICE_USER}:{self.mqtt_service}@{mqtt}"
        mqtt_commands = f"mqtt://{COMMANDS_USER}:{self.mqtt_commands}@{mqtt}"
        mqtt_admin = f"mqtt://{ADMIN_USER}:{self.mqtt_admin}@{mqtt}"
        mqtt_of = {"gateway": mqtt_service, "commands": mqtt_commands}
        services = {
            name: ServiceUrls(
                database_url=(
                    database(database_role(name), self.database_roles[name]) if name in self.database_roles else None
                ),
                redis_url=redis(redis_user(name), self.redis_users[name]) if name in self.redis_users else None,
                mqtt_url=mqtt_of.get(name),
                mqtt_admin_url=mqtt_admin if name == "api" else None,
            )
            for name in SERVICES
        }
        return StackUrls(
            database_url=database(DATABASE_USER, self.postgres),
            mqtt_url=mqtt_service,
            redis_url=f"redis://:{self.redis}@{LOOPBACK}:{ports.redis}/0",
            mqtt_admin_url=mqtt_admin,
            mqtt_commands_url=mqtt_commands,
            services=services,
        )


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A device's MQTT login: its username and client id are both its device id."""

    device_id: str
    password: str = field(repr=False)


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
