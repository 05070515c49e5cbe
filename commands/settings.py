"""The command rules from `FLEET_COMMANDS_*` variables, read by the entry points (never at import)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from commands.model import DEFAULT_TTL_S, MAX_TTL_S, Action, Rules


class CommandSettings(BaseSettings):
    """`FLEET_COMMANDS_TTL_S='{"lock": 3600}'` changes one action's default time to live."""

    model_config = SettingsConfigDict(env_prefix="FLEET_COMMANDS_", env_file=None, extra="ignore")

    ack_timeout_s: float = Field(default=10.0, gt=0)
    backoff: float = Field(default=2.0, ge=1)
    max_sends: int = Field(default=5, ge=1)
    park_speed_kmh: float = Field(default=3.0, ge=0)
    park_s: float = Field(default=30.0, ge=0)
    ttl_s: dict[Action, float] = Field(default_factory=dict)
    max_ttl_s: float = Field(default=MAX_TTL_S, gt=0)
    # Connections the service publishes commands on; a device always takes the same one (its order kept).
    publishers: int = Field(default=1, ge=1, le=64)

    def rules(self) -> Rules:
        return Rules(
            ack_timeout_s=self.ack_timeout_s, backoff=self.backoff, max_sends=self.max_sends,
            park_speed_kmh=self.park_speed_kmh, park_s=self.park_s, ttl_s={**DEFAULT_TTL_S, **self.ttl_s},
            max_ttl_s=self.max_ttl_s,
        )  # fmt: skip
