"""Where the servers are: external URLs from settings, or the local stack under the state folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.settings import Settings, with_ca_file

if TYPE_CHECKING:
    from gateway.stack import Stack, StackUrls


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    mqtt_url: str
    redis_url: str
    mqtt_admin_url: str | None
    local_stack: bool

    def env(self) -> dict[str, str]:
        """The same endpoints as `FLEET_*` variables, for child processes."""
        env = {
            "FLEET_DATABASE_URL": self.database_url,
            "FLEET_MQTT_URL": self.mqtt_url,
            "FLEET_REDIS_URL": self.redis_url,
        }
        if self.mqtt_admin_url:
            env["FLEET_MQTT_ADMIN_URL"] = self.mqtt_admin_url
        return env


def local_stack(settings: Settings) -> Stack:
    from gateway.stack import Ports, Stack

    ports = Ports(
        mqtt=settings.mqtt_port, postgres=settings.postgres_port, redis=settings.redis_port, mqtts=settings.mqtts_port
    )
    return Stack(settings.state_dir, ports, mqtt_plain=settings.mqtt_plain)


def resolve(settings: Settings, *, start: bool = False) -> Endpoints:
    """External URLs win; anything unset comes from the local stack (started first if `start`)."""
    ca = settings.mqtt_ca_file
    if settings.external:
        admin = settings.mqtt_admin_url
        return Endpoints(
            settings.database_url or "",
            with_ca_file(settings.mqtt_url or "", ca),
            settings.redis_url or "",
            with_ca_file(admin, ca) if admin else None,
            local_stack=False,
        )
    stack = local_stack(settings)
    urls: StackUrls = stack.up() if start else stack.urls()
    ca = ca or stack.ca_file  # an mqtts URL of ours without a CA trusts the stack's own
    return Endpoints(
        settings.database_url or urls.database_url,
        with_ca_file(settings.mqtt_url or urls.mqtt_url, ca),
        settings.redis_url or urls.redis_url,
        with_ca_file(settings.mqtt_admin_url or urls.mqtt_admin_url, ca),
        local_stack=True,
    )
