"""Utilization maths: ride, idle, in-service and maintenance hours per device and fleet, per bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from geofence.errors import GeofenceError
from geofence.trips import Trip
from geofence.utilization import DAY_S, HOUR_S, ServiceChange, ServiceStatus, utilization

T0 = datetime(2026, 11, 23, tzinfo=UTC).timestamp()


def trip(device: str, start_h: float, end_h: float) -> Trip:
    a, b = T0 + start_h * HOUR_S, T0 + end_h * HOUR_S
    return Trip(device, datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC), 0, 0, 0, 0, 1000.0, b - a, 2)


def test_hourly_ride_idle_and_maintenance_by_hand() -> None:
    trips = [trip("a", 0.5, 1.25), trip("b", 0.0, 0.5), trip("b", 1.5, 1.75)]
    changes = [ServiceChange("b", T0 + 1.5 * HOUR_S, ServiceStatus.MAINTENANCE)]
    r = utilization(trips, changes, ["a", "b"], (T0, T0 + 2 * HOUR_S))
    h = HOUR_S
    assert r.bucket_start.tolist() == [T0, T0 + h]
    assert r.ride_s.tolist() == [[0.5 * h, 0.25 * h], [0.5 * h, 0.0]]  # b's ride in maintenance is not utilization
    assert r.in_service_s.tolist() == [[h, h], [h, 0.5 * h]]
    assert r.idle_s.tolist() == [[0.5 * h, 0.75 * h], [0.5 * h, 0.5 * h]]
    assert r.maintenance_s.tolist() == [[0, 0], [0, 0.5 * h]]
    assert r.utilization.tolist() == [[0.5, 0.25], [0.5, 0.0]]
    assert r.fleet_utilization.tolist() == [0.5, pytest.approx(0.25 / 1.5)]
    assert r.vehicles_in_service.tolist() == [2, 2] and r.vehicles_in_maintenance.tolist() == [0, 1]
    np.testing.assert_allclose(r.ride_s + r.idle_s, r.in_service_s)


def test_daily_buckets_align_to_utc_midnight_and_split_trips() -> None:
    trips = [trip("a", 23.0, 25.0)]
    r = utilization(trips, [], ["a"], (T0 + 3 * HOUR_S, T0 + 30 * HOUR_S), bucket_s=DAY_S)
    assert r.bucket_start.tolist() == [T0, T0 + DAY_S]
    assert r.ride_s.tolist() == [[HOUR_S, HOUR_S]]
    assert r.in_service_s.tolist() == [[DAY_S, DAY_S]]


def test_status_before_the_window_and_inactive_devices() -> None:
    changes = [
        ServiceChange("a", T0 - 10 * HOUR_S, ServiceStatus.MAINTENANCE),
        ServiceChange("a", T0 - 5 * HOUR_S, ServiceStatus.IN_SERVICE),
        ServiceChange("b", T0 - HOUR_S, ServiceStatus.INACTIVE),
        ServiceChange("zz", T0, ServiceStatus.MAINTENANCE),  # not in the fleet asked about: ignored
    ]
    r = utilization([trip("b", 0, 1)], changes, ["a", "b"], (T0, T0 + HOUR_S))
    assert r.in_service_s.tolist() == [[HOUR_S], [0.0]]
    assert r.maintenance_s.tolist() == [[0.0], [0.0]]
    assert r.ride_s.tolist() == [[0.0], [0.0]]
    assert np.isnan(r.utilization[1, 0]) and r.vehicles_in_service.tolist() == [1]


def test_initial_status_is_a_parameter() -> None:
    r = utilization([], [], ["a"], (T0, T0 + HOUR_S), initial=ServiceStatus.MAINTENANCE)
    assert r.maintenance_s.tolist() == [[HOUR_S]] and np.isnan(r.fleet_utilization[0])


def test_bad_window_is_refused() -> None:
    with pytest.raises(GeofenceError):
        utilization([], [], ["a"], (T0, T0))
    with pytest.raises(GeofenceError):
        utilization([], [], ["a"], (T0, T0 + 1), bucket_s=0)
