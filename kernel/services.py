"""The services of the fleet and the accounts each one logs in with: named here once, so the local stack,
the grants, the ACLs and the endpoints all agree on them."""

from __future__ import annotations

from dataclasses import dataclass

from kernel.settings import redacted_repr

# The broker accounts of the services (devices log in as their own id).
SERVICE_USER = "fleet-service"
COMMANDS_USER = "fleet-commands"
ADMIN_USER = "fleet-admin"

# The services, each with its own accounts. The gateway keeps no database connection.
SERVICES = ("gateway", "ingest", "geofence", "commands", "lockout", "api", "notify")
DATABASE_SERVICES = ("ingest", "geofence", "commands", "lockout", "api", "notify")
REDIS_SERVICES = (
    "gateway",
    "ingest",
    "geofence",
    "commands",
    "lockout",
    "api",
)  # the notify service keeps no Redis connection


def database_role(service: str) -> str:
    """The PostgreSQL login role of a service: `fleet_ingest`, ... (no quoting needed in SQL)."""
    return f"fleet_{service}"


def redis_user(service: str) -> str:
    """The Redis ACL user of a service: `fleet-ingest`, ..."""
    return f"fleet-{service}"


@dataclass(frozen=True, slots=True, repr=False)
class ServiceUrls:
    """What one service connects with: its own accounts only (None where it needs no such server)."""

    database_url: str | None = None
    redis_url: str | None = None
    mqtt_url: str | None = None
    mqtt_admin_url: str | None = None

    __repr__ = redacted_repr
