"""Topic routing: which decoder a message goes to, and which device sent it.

The device id comes from the topic only (the broker's ACL ties a topic to the MQTT username), so a
payload can never choose the device it is stored under; it can only agree with the topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

RouteKind = Literal["telemetry", "nmea", "status", "cmd_ack", "owntracks"]

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_FLEET_SUFFIXES: dict[tuple[str, ...], RouteKind] = {
    ("telemetry",): "telemetry",
    ("nmea",): "nmea",
    ("status",): "status",
    ("cmd", "ack"): "cmd_ack",
}


def is_device_id(text: str) -> bool:
    """Strict check: ASCII only, no MQTT wildcards or separators, at most 64 characters."""
    return DEVICE_ID_RE.fullmatch(text) is not None and text.isascii()


@dataclass(frozen=True, slots=True)
class Route:
    """Where a device message goes. `kind` picks the decoder; `device_id` is authoritative."""

    kind: RouteKind
    device_id: str

    def __post_init__(self) -> None:
        if not is_device_id(self.device_id):
            raise ValueError(f"invalid device id {self.device_id!r}")


@lru_cache(maxsize=65536)
def route(topic: str) -> Route | None:
    """Route an inbound topic, or None for anything outside protocol v1 (the caller dead-letters it).

    `fleet/{id}/cmd` is server-to-device and is deliberately not routed: a device echoing commands
    back must not look like valid input. OwnTracks sub-topics (`/event`, `/waypoint`, ...) route to
    the OwnTracks decoder, which counts their non-location `_type`s instead of dead-lettering them.
    Cached: a fleet repeats a few topics per device, and routing is on every message's path.
    """
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "fleet":
        kind = _FLEET_SUFFIXES.get(tuple(parts[2:]))
        if kind is not None and is_device_id(parts[1]):
            return Route(kind, parts[1])
        return None
    if parts[0] == "owntracks" and len(parts) in (3, 4) and all(is_device_id(p) for p in parts[1:]):
        return Route("owntracks", parts[1])
    return None
