"""Where the servers are, as a service sees them: the URLs of its own accounts.

`localstack.resolve` fills these from settings or from the local stack under the state folder.

Every service connects with accounts of its own (`Endpoints.for_service`). For each service and
each kind of server the URL is, first found first: the service's own setting
(`FLEET_INGEST_DATABASE_URL`, ...), the general one (`FLEET_DATABASE_URL`, ...), and the local
stack's account for that service. URLs you give are used as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kernel.services import ServiceUrls
from kernel.settings import redact, redacted_repr

# What a service needs before it can run without the local stack (the API's broker account is optional).
NEEDS: dict[str, tuple[str, ...]] = {
    "gateway": ("mqtt_url", "redis_url"),
    "ingest": ("database_url", "redis_url"),
    "geofence": ("database_url", "redis_url"),
    "commands": ("database_url", "redis_url", "mqtt_url"),
    "lockout": ("database_url", "redis_url"),
    "api": ("database_url", "redis_url"),
    "notify": ("database_url",),  # the reminder and outbox sender: PostgreSQL and the mail server only
}
URL_VARIABLES_SUFFIX = "_URL"


@dataclass(frozen=True, slots=True, repr=False)
class Endpoints:
    """The administrative URLs (database owner, Redis admin, the broker's gateway and admin accounts)
    and each service's own. `for_service(name)` is what a service process is handed."""

    database_url: str
    mqtt_url: str
    redis_url: str
    mqtt_admin_url: str | None
    local_stack: bool
    services: Mapping[str, ServiceUrls] = field(default_factory=dict)

    __repr__ = redacted_repr

    def env(self) -> dict[str, str]:
        """The same endpoints as `FLEET_*` variables, for child processes (only those that are set)."""
        env = {
            "FLEET_DATABASE_URL": self.database_url,
            "FLEET_MQTT_URL": self.mqtt_url,
            "FLEET_REDIS_URL": self.redis_url,
            "FLEET_MQTT_ADMIN_URL": self.mqtt_admin_url or "",
        }
        return {name: value for name, value in env.items() if value}

    def for_service(self, service: str) -> Endpoints:
        """The endpoints as `service` sees them: its own accounts in the general fields, nothing else.
        Without per-service URLs (servers given as one set of URLs) it shares the general ones."""
        if service not in NEEDS:
            raise ValueError(f"unknown service {service!r}; one of {', '.join(NEEDS)}")
        own = self.services.get(service)
        if own is None:
            return Endpoints(self.database_url, self.mqtt_url, self.redis_url,
                             self.mqtt_admin_url if service == "api" else None, self.local_stack)  # fmt: skip
        return Endpoints(
            own.database_url or "", own.mqtt_url or "", own.redis_url or "", own.mqtt_admin_url, self.local_stack
        )

    def service_env(self, service: str, base: Mapping[str, str]) -> dict[str, str]:
        """Environment for a child process running `service`: `base` without any `FLEET_*_URL`
        (so it holds no other account's secret), plus the service's own URLs."""
        kept = {k: v for k, v in base.items() if not (k.startswith("FLEET_") and k.endswith(URL_VARIABLES_SUFFIX))}
        own = self.for_service(service).env()
        if service == "commands" and "FLEET_MQTT_URL" in own:  # its broker account has a setting of its own
            own["FLEET_MQTT_COMMANDS_URL"] = own.pop("FLEET_MQTT_URL")
        return {**kept, **own}

    def shown(self) -> dict[str, str]:
        """Every URL with its password redacted, by account: for printing."""
        shown = {
            "owner database": self.database_url, "admin redis": self.redis_url,
            "admin mqtt": self.mqtt_admin_url or "", "mqtt": "" if self.services else self.mqtt_url,
        }  # fmt: skip
        for name, own in self.services.items():
            shown[f"{name} database"] = own.database_url or ""
            shown[f"{name} redis"] = own.redis_url or ""
            shown[f"{name} mqtt"] = own.mqtt_url or ""
        return {k: redact(v) for k, v in shown.items() if v}
