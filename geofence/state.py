"""Per-device geofence state, small enough to keep one key per device in Redis.

The state is what makes a worker restart invisible: it holds the zones a device is in (with when it
entered, whether the dwell event fired, whether a violation is running) and its last point, which
is the start of the next segment tested for `cross`. The transition step takes it and returns the
next one; nothing else is remembered between batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from geofence.errors import StateError

_FORMAT = 1
_DWELL_FIRED, _VIOLATING = 1, 2


@dataclass(frozen=True, slots=True)
class Membership:
    """The device is in this zone (after hysteresis) since `entered_at` (epoch seconds)."""

    zone_id: str
    entered_at: float
    dwell_fired: bool = False
    violating: bool = False  # the zone's violation condition held at the last point


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    time: float  # epoch seconds of the last point taken into account
    lon: float
    lat: float
    zones: tuple[Membership, ...] = ()

    def to_bytes(self) -> bytes:
        zones = [
            [m.zone_id, m.entered_at, (_DWELL_FIRED if m.dwell_fired else 0) | (_VIOLATING if m.violating else 0)]
            for m in self.zones
        ]
        return msgspec.msgpack.encode([_FORMAT, self.device_id, self.time, self.lon, self.lat, zones])

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceState:
        """Decode stored state; corrupt or foreign bytes raise `StateError` (the caller then starts
        the device afresh, which costs at most one spurious `enter` per zone)."""
        try:
            fmt, device_id, time, lon, lat, zones = msgspec.msgpack.decode(data)
            if fmt != _FORMAT:
                raise StateError(f"unknown device state format {fmt!r}")
            members = tuple(
                Membership(str(z), float(t), bool(flags & _DWELL_FIRED), bool(flags & _VIOLATING))
                for z, t, flags in zones
            )
            state = cls(str(device_id), float(time), float(lon), float(lat), members)
        except StateError:
            raise
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise StateError(f"undecodable device state: {exc}") from None
        if not all(math.isfinite(v) for v in (state.time, state.lon, state.lat)):
            raise StateError(f"device state of {state.device_id!r} holds non-finite numbers")
        return state
