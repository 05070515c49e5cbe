"""Theft suspicion: one event per episode of a locked vehicle moving, by speed or by displacement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from commands.model import Rules, Vehicle
from commands.theft import Watch, distance_m, watch

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RULES = Rules(park_speed_kmh=3.0, park_s=30.0)
HOME = (13.40, 52.52)


def at(
    seconds: float, speed: float | None = 0.0, lon: float = HOME[0], lat: float = HOME[1], still: float | None = 0.0
) -> Vehicle:
    still_since = None if still is None else T0 + timedelta(seconds=still)
    return Vehicle(True, True, T0 + timedelta(seconds=seconds), speed, still_since, lon, lat)


def test_speed_raises_once_per_episode_and_parking_ends_it() -> None:
    w = Watch(anchor=HOME)
    w, raised = watch(w, at(1, 0.5), T0 + timedelta(seconds=1), RULES)
    assert raised is None
    w, raised = watch(w, at(2, 14.0, still=None), T0 + timedelta(seconds=2), RULES)
    assert raised is not None and "14 km/h" in raised.reason
    w, again = watch(w, at(3, 16.0, still=None), T0 + timedelta(seconds=3), RULES)
    assert again is None and w.open
    far = HOME[0] + 0.01
    w, _ = watch(w, at(100, 0.0, lon=far, still=60), T0 + timedelta(seconds=100), RULES)
    assert not w.open and w.anchor == (far, HOME[1])  # parked again, somewhere else
    w, raised = watch(w, at(200, 12.0, lon=far, still=None), T0 + timedelta(seconds=200), RULES)
    assert raised is not None  # a new episode


def test_carried_away_without_speed() -> None:
    _, raised = watch(Watch(anchor=HOME), at(5, None, lat=HOME[1] + 0.001), T0 + timedelta(seconds=5), RULES)
    assert raised is not None and "moved 111 m" in raised.reason


def test_gps_noise_is_not_theft() -> None:
    _, raised = watch(Watch(anchor=HOME), at(5, 1.0, lat=HOME[1] + 0.0002), T0 + timedelta(seconds=5), RULES)
    assert raised is None


def test_first_fix_becomes_the_anchor() -> None:
    w, raised = watch(Watch(), at(1), T0, RULES)
    assert raised is None and w.anchor == HOME


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.floats(-0.002, 0.002), st.floats(0, 60)), max_size=40))
def test_never_two_events_without_a_parked_report_between(seq: list[tuple[float, float, float]]) -> None:
    w = Watch(anchor=HOME)
    t = 0.0
    parked_since_last_event = True
    for speed, dlat, dt in seq:
        t += dt
        still = t - 40 if speed <= RULES.park_speed_kmh else None
        v = at(t, speed, lat=HOME[1] + dlat, still=still)
        w, raised = watch(w, v, T0 + timedelta(seconds=t), RULES)
        if raised is not None:
            assert parked_since_last_event
            parked_since_last_event = False
        elif not w.open:
            parked_since_last_event = True


def test_distance() -> None:
    assert abs(distance_m((13.4, 52.52), (13.4, 52.53)) - 1112) < 2
