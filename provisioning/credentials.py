"""A device's broker login, as the registry hands it out and the local stack writes it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A device's MQTT login: its username and client id are both its device id."""

    device_id: str
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        """The broker login name: the device id (the broker's ACLs are written per username)."""
        return self.device_id
