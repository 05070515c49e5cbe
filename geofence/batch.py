"""A batch of positions as columns: what the ingest worker hands the geofence core once per flush.

Columns rather than records so every later step is one numpy expression over the batch. Units as in
`kernel.records.Telemetry`: degrees, km/h, and time as float epoch seconds (UTC), which keeps
arithmetic on times exact to the microsecond for centuries and costs one conversion at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from geofence.errors import BatchError
from kernel.records import Telemetry

LOCKED, UNLOCKED, LOCK_UNKNOWN = 1, 0, -1


@dataclass(frozen=True, slots=True)
class PositionBatch:
    """Positions of many devices; `device[i]` indexes `device_ids`. Build with `from_columns`."""

    device_ids: tuple[str, ...]
    device: np.ndarray  # int64
    time: np.ndarray  # float64 epoch seconds
    lon: np.ndarray  # float64 degrees
    lat: np.ndarray
    speed_kmh: np.ndarray  # float64, NaN when the device did not say
    locked: np.ndarray  # int8: 1 locked, 0 unlocked, -1 unknown

    def __post_init__(self) -> None:
        n = len(self.device)
        columns = (self.time, self.lon, self.lat, self.speed_kmh, self.locked)
        if any(c.ndim != 1 or len(c) != n for c in (self.device, *columns)):
            raise BatchError("all batch columns must be 1-d arrays of the same length")
        if n == 0:
            return
        if self.device.min() < 0 or self.device.max() >= len(self.device_ids):
            raise BatchError("device index outside device_ids")
        if not np.isfinite(self.time).all():
            raise BatchError("time must be finite epoch seconds")
        bad = ~((np.abs(self.lon) <= 180) & (np.abs(self.lat) <= 90))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BatchError(
                f"position {i} of device {self.device_ids[self.device[i]]!r} is not a valid lon/lat: "
                f"({self.lon[i]}, {self.lat[i]})"
            )
        if not np.isin(self.locked, (LOCKED, UNLOCKED, LOCK_UNKNOWN)).all():
            raise BatchError("locked must be 1, 0 or -1")

    def __len__(self) -> int:
        return len(self.device)

    @classmethod
    def from_columns(
        cls,
        device_ids: Sequence[str],
        device: Sequence[int] | np.ndarray,
        time: Sequence[float] | np.ndarray,
        lon: Sequence[float] | np.ndarray,
        lat: Sequence[float] | np.ndarray,
        speed_kmh: Sequence[float] | np.ndarray | None = None,
        locked: Sequence[int] | np.ndarray | None = None,
    ) -> PositionBatch:
        """Coerce to the column dtypes; missing speed is NaN, missing lock state is -1 (unknown)."""
        try:
            dev = np.asarray(device, dtype=np.int64)
            n = len(dev)
            speed = np.full(n, np.nan) if speed_kmh is None else np.asarray(speed_kmh, dtype=np.float64)
            lock = np.full(n, LOCK_UNKNOWN, np.int8) if locked is None else np.asarray(locked, dtype=np.int8)
            return cls(
                device_ids=tuple(device_ids),
                device=dev,
                time=np.asarray(time, dtype=np.float64),
                lon=np.asarray(lon, dtype=np.float64),
                lat=np.asarray(lat, dtype=np.float64),
                speed_kmh=speed,
                locked=lock,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, BatchError):
                raise
            raise BatchError(f"batch columns are not numeric arrays: {exc}") from None

    @classmethod
    def from_telemetry(cls, records: Iterable[Telemetry]) -> PositionBatch:
        """The positions among decoded records (records without a position are skipped)."""
        ids: dict[str, int] = {}
        rows = [
            (
                ids.setdefault(r.device_id, len(ids)),
                r.time.timestamp(),
                r.lon,
                r.lat,
                np.nan if r.speed_kmh is None else r.speed_kmh,
                LOCK_UNKNOWN if r.locked is None else int(r.locked),
            )
            for r in records
            if r.has_position
        ]
        columns = list(zip(*rows, strict=True)) if rows else [()] * 6
        return cls.from_columns(tuple(ids), *columns)
