"""Fleet utilization per device and fleet-wide, per hour or per day, from trips and service status.

The maths is a sweep: every device's window is cut at its status changes and trip boundaries into
pieces over which "status" and "in a trip" are constant, and each piece is spread over the buckets it
overlaps. Then, per bucket:

- in-service hours: time in status `in_service` (the denominator);
- ride hours: in-service time inside a trip; idle hours: in-service time outside one;
- maintenance hours: time in `maintenance`, reported apart and never in the denominator (a ride
  during maintenance, such as a workshop test ride, is not counted as utilization);
- utilization = ride / in-service: the time-average share of in-service vehicles that are in a trip.

`inactive` (retired, in storage) counts nowhere. Buckets are aligned to UTC (hour or day).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from geofence.errors import GeofenceError
from geofence.trips import Trip

HOUR_S, DAY_S = 3600.0, 86400.0


class ServiceStatus(StrEnum):
    IN_SERVICE = "in_service"
    MAINTENANCE = "maintenance"
    INACTIVE = "inactive"


_CODE = {status: code for code, status in enumerate(ServiceStatus)}


@dataclass(frozen=True, slots=True)
class ServiceChange:
    """From `time` (epoch seconds) on, the device has `status`."""

    device_id: str
    time: float
    status: ServiceStatus


@dataclass(frozen=True, slots=True)
class UtilizationReport:
    """Per-device arrays are [device, bucket]; fleet arrays are [bucket]. Seconds throughout."""

    bucket_s: float
    bucket_start: np.ndarray  # epoch seconds
    device_ids: tuple[str, ...]
    ride_s: np.ndarray
    idle_s: np.ndarray
    in_service_s: np.ndarray
    maintenance_s: np.ndarray

    @property
    def utilization(self) -> np.ndarray:
        return _share(self.ride_s, self.in_service_s)

    @property
    def fleet_ride_s(self) -> np.ndarray:
        return self.ride_s.sum(axis=0)

    @property
    def fleet_idle_s(self) -> np.ndarray:
        return self.idle_s.sum(axis=0)

    @property
    def fleet_in_service_s(self) -> np.ndarray:
        return self.in_service_s.sum(axis=0)

    @property
    def fleet_maintenance_s(self) -> np.ndarray:
        return self.maintenance_s.sum(axis=0)

    @property
    def fleet_utilization(self) -> np.ndarray:
        return _share(self.fleet_ride_s, self.fleet_in_service_s)

    @property
    def vehicles_in_service(self) -> np.ndarray:
        """Vehicles in service at any time of the bucket."""
        return (self.in_service_s > 0).sum(axis=0)

    @property
    def vehicles_in_maintenance(self) -> np.ndarray:
        return (self.maintenance_s > 0).sum(axis=0)


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole, NaN where there is no whole (no in-service time: utilization is undefined)."""
    out = np.full(np.shape(whole), np.nan)
    np.divide(part, whole, out=out, where=whole > 0)
    return out


def utilization(
    trips: Sequence[Trip],
    changes: Sequence[ServiceChange],
    device_ids: Sequence[str],
    window: tuple[float, float],
    *,
    bucket_s: float = HOUR_S,
    initial: ServiceStatus = ServiceStatus.IN_SERVICE,
) -> UtilizationReport:
    """Utilization of `device_ids` over `window` (epoch seconds, widened to whole buckets).

    A device's status before its first change is `initial`; trips and changes of other devices are
    ignored.
    """
    if bucket_s <= 0 or not window[0] < window[1]:
        raise GeofenceError("utilization needs bucket_s > 0 and a window with start < end")
    t0 = np.floor(window[0] / bucket_s) * bucket_s
    nb = int(np.ceil((window[1] - t0) / bucket_s))
    t1 = t0 + nb * bucket_s
    ids = tuple(device_ids)
    slot = {d: i for i, d in enumerate(ids)}
    nd = len(ids)
    trip_dev, trip_a, trip_b = _columns(
        [(slot[tr.device_id], tr.start.timestamp(), tr.end.timestamp()) for tr in trips if tr.device_id in slot]
    )
    ch_dev, ch_t, ch_code = _columns(
        [(slot[c.device_id], c.time, _CODE[ServiceStatus(c.status)]) for c in changes if c.device_id in slot]
    )
    # times become int64 microseconds from t0 and (device, time) one int64 key: exact sums, one sort
    width = _us(t1 - t0) + 1
    cuts = np.concatenate([trip_a, trip_b, ch_t])
    dev = np.concatenate([np.arange(nd), np.arange(nd), trip_dev, trip_dev, ch_dev])
    us = np.concatenate([np.zeros(nd, np.int64), np.full(nd, width - 1), _us(np.clip(cuts, t0, t1) - t0)])
    key = np.unique(dev * width + us)
    piece_dev = key // width
    a = key - piece_dev * width
    b = np.append(a[1:], width - 1)
    keep = np.append(piece_dev[1:] == piece_dev[:-1], False) & (b > a)
    piece_dev, a, b, key = piece_dev[keep], a[keep], b[keep], key[keep]
    status = _status_at(
        key, ch_dev * width + _us(np.clip(ch_t, t0, t1) - t0), ch_t, ch_code, _CODE[ServiceStatus(initial)], width
    )
    starts = np.sort(trip_dev * width + _us(np.clip(trip_a, t0, t1) - t0))
    stops = np.sort(trip_dev * width + _us(np.clip(trip_b, t0, t1) - t0))
    in_trip = np.searchsorted(starts, key, side="right") > np.searchsorted(stops, key, side="right")
    in_service = status == _CODE[ServiceStatus.IN_SERVICE]
    maint = status == _CODE[ServiceStatus.MAINTENANCE]
    bucket_us = _us(bucket_s)
    shape = (nd, nb)
    return UtilizationReport(
        bucket_s=float(bucket_s),
        bucket_start=t0 + bucket_s * np.arange(nb),
        device_ids=ids,
        ride_s=_spread(piece_dev, a, b, in_service & in_trip, bucket_us, shape),
        idle_s=_spread(piece_dev, a, b, in_service & ~in_trip, bucket_us, shape),
        in_service_s=_spread(piece_dev, a, b, in_service, bucket_us, shape),
        maintenance_s=_spread(piece_dev, a, b, maint, bucket_us, shape),
    )


def _columns(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    d, x, y = zip(*rows, strict=True)
    return np.array(d, np.int64), np.array(x, np.float64), np.array(y)


def _us(seconds: np.ndarray | float) -> np.ndarray:
    return np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)


def _status_at(
    key: np.ndarray, ch_key: np.ndarray, ch_t: np.ndarray, ch_code: np.ndarray, init: int, width: int
) -> np.ndarray:
    """Status of each piece: the device's last change at or before the piece start, else `init`.
    Changes before the window are clipped to its start; the original time breaks their ties."""
    if len(ch_key) == 0:
        return np.full(len(key), init)
    order = np.lexsort((ch_t, ch_key))
    ch_key, ch_code = ch_key[order], ch_code[order]
    pos = np.searchsorted(ch_key, key, side="right") - 1
    hit = (pos >= 0) & (ch_key[np.maximum(pos, 0)] // width == key // width)
    return np.where(hit, ch_code[np.maximum(pos, 0)], init)


def _spread(dev: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray, bucket: int, shape: tuple) -> np.ndarray:
    """Sum the masked pieces [a, b) (microseconds from t0) into [device, bucket] cells, in seconds."""
    dev, a, b = dev[mask], a[mask], b[mask]
    first = a // bucket
    n = np.maximum((b - 1) // bucket - first + 1, 0)
    k = np.repeat(np.arange(len(a)), n)
    cell = np.repeat(first, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    lo = np.maximum(a[k], cell * bucket)
    hi = np.minimum(b[k], (cell + 1) * bucket)
    flat = np.bincount(dev[k] * shape[1] + cell, weights=(hi - lo) / 1e6, minlength=shape[0] * shape[1])
    return flat.reshape(shape)
