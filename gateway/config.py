"""Where the servers are: external URLs from settings, or the local stack under the state folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.stack import Stack, StackUrls


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    mqtt_url: str
    redis_url: str
    mqtt_admin_url: str | None
    local_stack: bool
    mqtt_commands_url: str | None = None  # the command service's account (publishes only fleet/+/cmd)

    def env(self) -> dict[str, str]:
        """The same endpoints as `FLEET_*` variables, for child processes."""
        env = {
            "FLEET_DATABASE_URL": self.database_url,
            "FLEET_MQTT_URL": self.mqtt_url,
            "FLEET_REDIS_URL": self.redis_url,
        }
        if self.mqtt_admin_url:
            env["FLEET_MQTT_ADMIN_URL"] = self.mqtt_admin_url
        if self.mqtt_commands_url:
            env["FLEET_MQTT_COMMANDS_URL"] = self.mqtt_commands_url
        return env


def local_stack(settings: Settings) -> Stack:
    from gateway.stack import Ports, Stack

    ports = Ports(mqtt=settings.mqtt_port, postgres=settings.postgres_port, redis=settings.redis_port)
    return Stack(settings.state_dir, ports)


def resolve(settings: Settings, *, start: bool = False) -> Endpoints:
    """External URLs win; anything unset comes from the local stack (started first if `start`)."""
    if settings.external:
        return Endpoints(
            settings.database_url or "",
            settings.mqtt_url or "",
            settings.redis_url or "",
            settings.mqtt_admin_url,
            local_stack=False,
            mqtt_commands_url=settings.mqtt_commands_url,
        )
    stack = local_stack(settings)
    urls: StackUrls = stack.up() if start else stack.urls()
    return Endpoints(
        settings.database_url or urls.database_url,
        settings.mqtt_url or urls.mqtt_url,
        settings.redis_url or urls.redis_url,
        settings.mqtt_admin_url or urls.mqtt_admin_url,
        local_stack=True,
        mqtt_commands_url=settings.mqtt_commands_url or urls.mqtt_commands_url,
    )
