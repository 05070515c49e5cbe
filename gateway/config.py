"""Where the servers are: external URLs from settings, or the local stack under the state folder.

Every service connects with accounts of its own (`Endpoints.for_service`). For each service and
each kind of server the URL is, first found first: the service's own setting
(`FLEET_INGEST_DATABASE_URL`, ...), the general one (`FLEET_DATABASE_URL`, ...), and the local
stack's account for that service. URLs you give are used as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.settings import Settings, redact, redacted_repr, with_ca_file
from gateway.stack.model import SERVICES, ServiceUrls

if TYPE_CHECKING:
    from gateway.stack import Stack

# What a service needs before it can run without the local stack (the API's broker account is optional).
NEEDS: dict[str, tuple[str, ...]] = {
    "gateway": ("mqtt_url", "redis_url"),
    "ingest": ("database_url", "redis_url"),
    "geofence": ("database_url", "redis_url"),
    "commands": ("database_url", "redis_url", "mqtt_url"),
    "lockout": ("database_url", "redis_url"),
    "api": ("database_url", "redis_url"),
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


def local_stack(settings: Settings) -> Stack:
    from gateway.stack import Ports, Stack

    ports = Ports(
        mqtt=settings.mqtt_port, postgres=settings.postgres_port, redis=settings.redis_port, mqtts=settings.mqtts_port
    )
    return Stack(settings.state_dir, ports, mqtt_plain=settings.mqtt_plain)


def _given(settings: Settings, service: str) -> ServiceUrls:
    """What the settings say about one service's accounts (None where they say nothing)."""
    kinds = NEEDS[service]
    return ServiceUrls(
        database_url=settings.service_url(service, "database") if "database_url" in kinds else None,
        redis_url=settings.service_url(service, "redis"),
        # the command service has a broker account of its own (it may publish only fleet/+/cmd)
        mqtt_url=(settings.mqtt_commands_url if service == "commands" else settings.mqtt_url)
        if "mqtt_url" in kinds
        else None,
        mqtt_admin_url=settings.mqtt_admin_url if service == "api" else None,
    )


def _complete(urls: ServiceUrls, service: str) -> bool:
    return all(getattr(urls, kind) for kind in NEEDS[service])


def _overlay(given: ServiceUrls, stack: ServiceUrls) -> ServiceUrls:
    return ServiceUrls(
        given.database_url or stack.database_url,
        given.redis_url or stack.redis_url,
        given.mqtt_url or stack.mqtt_url,
        given.mqtt_admin_url or stack.mqtt_admin_url,
    )


def _trusting(urls: ServiceUrls, ca: str | Path | None) -> ServiceUrls:
    """`urls` with their mqtts URLs naming `ca` where they name no CA of their own."""
    return replace(
        urls,
        mqtt_url=with_ca_file(urls.mqtt_url, ca) if urls.mqtt_url else None,
        mqtt_admin_url=with_ca_file(urls.mqtt_admin_url, ca) if urls.mqtt_admin_url else None,
    )


def resolve(settings: Settings, *, start: bool = False, service: str | None = None) -> Endpoints:
    """External URLs win; anything unset comes from the local stack (started first if `start`).

    With `service`, the result is that service's view (`Endpoints.for_service`), and the local
    stack is consulted only if the settings lack something the service needs. An mqtts URL without
    `?cafile=` trusts `FLEET_MQTT_CA_FILE`, else (local stack) the stack's own CA.
    """
    given = {name: _given(settings, name) for name in SERVICES}
    ca: str | Path | None = settings.mqtt_ca_file
    if settings.external if service is None else _complete(given[service], service):
        admin = settings.mqtt_admin_url
        endpoints = Endpoints(
            settings.database_url or "",
            with_ca_file(settings.mqtt_url or "", ca),
            settings.redis_url or "",
            with_ca_file(admin, ca) if admin else None,
            local_stack=False,
            services={name: _trusting(urls, ca) for name, urls in given.items()},
        )
    else:
        stack = local_stack(settings)
        urls = stack.up() if start else stack.urls()
        ca = ca or stack.ca_file  # an mqtts URL of ours without a CA trusts the stack's own
        endpoints = Endpoints(
            settings.database_url or urls.database_url,
            with_ca_file(settings.mqtt_url or urls.mqtt_url, ca),
            settings.redis_url or urls.redis_url,
            with_ca_file(settings.mqtt_admin_url or urls.mqtt_admin_url, ca),
            local_stack=True,
            services={name: _trusting(_overlay(given[name], urls.services[name]), ca) for name in SERVICES},
        )
    return endpoints.for_service(service) if service else endpoints
