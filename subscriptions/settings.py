"""Settings of the subscriptions services, read by the entry points (never at import): the lockout
policy (`FLEET_LOCKOUT_*`), the notify service (`FLEET_NOTIFY_*`) and the webhooks (`FLEET_WEBHOOK_*`)."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from subscriptions.policy import PolicySettings
from subscriptions.reminders import DEFAULT_OFFSETS, DEFAULT_SEND_TIME


class NotifySettings(BaseSettings):
    """`FLEET_NOTIFY_SMTP_HOST=mail.example.net FLEET_NOTIFY_SMTP_SECURITY=starttls ...`."""

    model_config = SettingsConfigDict(env_prefix="FLEET_NOTIFY_", env_file=None, extra="ignore")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_ca_file: str | None = None  # a private CA for the mail server's certificate
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    mail_from: str = "Fleet <fleet@localhost>"
    message_id_domain: str = "fleet.localhost"
    sms_url: str | None = None  # a JSON POST gateway; unset: SMS are written to the log
    sms_token: SecretStr | None = None
    offsets: tuple[int, ...] = DEFAULT_OFFSETS  # days before the end; 0 is the end day itself
    send_time: time = DEFAULT_SEND_TIME  # UTC time of day reminders go out
    staff_email: str | None = None  # the daily digest's address; unset: no digest
    digest_time: time = time(7, 0)  # UTC
    max_attempts: int = Field(default=8, ge=1)
    backoff_s: float = Field(default=60.0, gt=0)  # first retry; doubles per attempt
    max_backoff_s: float = Field(default=6 * 3600.0, gt=0)
    lease_s: float = Field(default=120.0, gt=0)  # a claimed row returns to the queue after this
    batch: int = Field(default=200, ge=1)
    workers: int = Field(default=4, ge=1, le=64)  # SMTP connections delivering one batch at once

    @field_validator("offsets")
    @classmethod
    def _offsets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(o < 0 or o > 366 for o in value):
            raise ValueError("offsets are whole days in 0..366")
        return tuple(sorted(set(value), reverse=True))


class WebhookSettings(BaseSettings):
    """The shop's shared secret: `FLEET_WEBHOOK_SECRET`, or better a private file `FLEET_WEBHOOK_SECRET_FILE`."""

    model_config = SettingsConfigDict(env_prefix="FLEET_WEBHOOK_", env_file=None, extra="ignore")

    secret: SecretStr | None = None
    secret_file: Path | None = None
    tolerance_s: float = Field(default=300.0, gt=0)

    def shared_secret(self) -> bytes | None:
        from kernel.secretfile import read_private

        if self.secret_file is not None:
            return read_private(self.secret_file).strip()
        return self.secret.get_secret_value().encode() if self.secret else None


class LockoutSettings(BaseSettings):
    """Defaults follow New Jersey's starter-interrupt rules: 72 hours' notice by two channels."""

    model_config = SettingsConfigDict(env_prefix="FLEET_LOCKOUT_", env_file=None, extra="ignore")

    notice_hours: float = Field(default=72.0, ge=0)  # the demo shortens it, and says so
    channels: int = Field(default=2, ge=0, le=2)

    def policy(self) -> PolicySettings:
        return PolicySettings(notice=timedelta(hours=self.notice_hours), channels=self.channels)
