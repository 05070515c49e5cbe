"""The lockout policy's settings from `FLEET_LOCKOUT_*` variables, read by the entry points (never at import)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from subscriptions.policy import PolicySettings


class LockoutSettings(BaseSettings):
    """Defaults follow New Jersey's starter-interrupt rules: 72 hours' notice by two channels."""

    model_config = SettingsConfigDict(env_prefix="FLEET_LOCKOUT_", env_file=None, extra="ignore")

    notice_hours: float = Field(default=72.0, ge=0)  # the demo shortens it, and says so
    channels: int = Field(default=2, ge=0, le=2)

    def policy(self) -> PolicySettings:
        return PolicySettings(notice=timedelta(hours=self.notice_hours), channels=self.channels)
