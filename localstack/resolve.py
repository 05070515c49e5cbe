"""Where the servers are for a command line: URLs from settings win, anything missing comes from the
local stack under the state folder (started first when asked). Only the composition root calls this:
services are handed their endpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kernel.endpoints import NEEDS, Endpoints
from kernel.services import SERVICES, ServiceUrls
from kernel.settings import Settings, with_ca_file
from localstack.manager import Stack
from localstack.model import Ports


def local_stack(settings: Settings) -> Stack:
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
