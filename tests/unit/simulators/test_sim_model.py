"""The movement model: repeatable for a seed, trips along streets at bicycle speeds, honest batteries."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from simulators.city import City, advance, route
from simulators.config import SimConfig, role
from simulators.encode import encode_json
from simulators.vehicle import (
    Behaviour,
    Mode,
    Profile,
    Reading,
    VehicleState,
    apply_command,
    initial_state,
    movement_rng,
    step,
)

T0 = 1_790_000_000.0
CITY = City()
BEHAVIOUR = Behaviour()


def simulate(seed: int, index: int, steps: int, dt: float = 1.0, config: SimConfig | None = None):
    config = config or SimConfig(devices=max(index + 1, 10), seed=seed)
    profile = role(config, index).profile
    rng = movement_rng(seed, index)
    state = initial_state(CITY, BEHAVIOUR, profile, rng, T0)
    states: list[VehicleState] = []
    readings: list[Reading] = []
    for k in range(1, steps + 1):
        state, reading = step(CITY, BEHAVIOUR, profile, state, T0 + k * dt, rng)
        states.append(state)
        readings.append(reading)
    return profile, states, readings


def payloads(seed: int, devices: int = 5, steps: int = 300) -> list[bytes]:
    out = []
    for i in range(devices):
        profile, _, readings = simulate(seed, i, steps)
        out.extend(encode_json(r, profile.device_id) for r in readings)
    return out


def moving_profile(index: int = 0) -> Profile:
    return Profile(f"t-{index}", index, maintenance=False, drain_pct_per_km=1.5, fault_codes=())


def test_same_seed_gives_the_same_payload_stream() -> None:
    assert payloads(42) == payloads(42)


def test_a_different_seed_gives_a_different_stream() -> None:
    assert payloads(42) != payloads(43)


def test_a_device_is_the_same_bike_whatever_the_fleet_size() -> None:
    small = simulate(7, 7, 200, config=SimConfig(devices=10, seed=7))
    large = simulate(7, 7, 200, config=SimConfig(devices=5000, seed=7))
    assert small[0] == large[0]
    assert small[2] == large[2]


def on_a_street(x: float, y: float) -> bool:
    def on_grid(v: float) -> bool:
        return abs(v / CITY.block_m - round(v / CITY.block_m)) < 1e-6

    return on_grid(x) or on_grid(y)


def test_trips_follow_the_street_grid_at_bicycle_speeds() -> None:
    rides = 0
    for index in range(12):
        profile = moving_profile(index)
        rng = np.random.default_rng([5, index])
        state = initial_state(CITY, BEHAVIOUR, profile, rng, T0)
        for k in range(1, 3600):
            before = state
            state, reading = step(CITY, BEHAVIOUR, profile, state, T0 + k, rng)
            assert on_a_street(*state.pos)
            assert 0 <= state.pos[0] <= CITY.width_m and 0 <= state.pos[1] <= CITY.height_m
            moved = math.dist(before.pos, state.pos)
            assert moved <= 25 / 3.6 + 1e-6  # never faster than 25 km/h, even diagonally
            if state.mode is Mode.RIDING and before.mode is Mode.RIDING:
                rides += 1
                assert 12 * 0.8 <= reading.speed_kmh <= 25 * 1.2
                assert not reading.locked
            if state.mode is Mode.PARKED and before.mode is Mode.PARKED:
                assert reading.speed_kmh == 0.0 and reading.locked
    assert rides > 2000  # the fleet actually rides


def test_a_route_is_a_chain_of_straight_street_segments() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        start = CITY.intersection(*CITY.random_spot(rng))
        goal = CITY.random_spot(rng)
        points = route(CITY, rng, start, goal)
        assert points[-1] == CITY.intersection(*goal)
        for a, b in itertools.pairwise(points):
            assert a[0] == b[0] or a[1] == b[1]  # no diagonals through houses
        length = sum(math.dist(a, b) for a, b in itertools.pairwise(points))
        manhattan = abs(points[-1][0] - start[0]) + abs(points[-1][1] - start[1])
        assert length == pytest.approx(manhattan)


def test_advance_stops_at_the_end_of_the_route() -> None:
    points = ((0.0, 0.0), (150.0, 0.0), (150.0, 300.0))
    leg, pos, covered = advance(points, 0, points[0], 100.0)
    assert (leg, pos, covered) == (0, (100.0, 0.0), 100.0)
    leg, pos, covered = advance(points, leg, pos, 1000.0)
    assert (leg, pos) == (2, (150.0, 300.0))
    assert covered == pytest.approx(350.0)


def test_maintenance_vehicles_never_move_beyond_gps_noise() -> None:
    profile = replace(moving_profile(), maintenance=True, fault_codes=("E12",))
    rng = np.random.default_rng(11)
    state = initial_state(CITY, BEHAVIOUR, profile, rng, T0)
    home = state.pos
    for k in range(1, 7200, 5):
        state, reading = step(CITY, BEHAVIOUR, profile, state, T0 + k, rng)
        assert state.pos == home and state.mode is Mode.MAINTENANCE
        assert reading.locked and reading.speed_kmh == 0.0 and reading.faults == ("E12",)
        if reading.fix:
            x, y = CITY.to_xy(reading.lon, reading.lat)
            assert math.dist((x, y), home) < 8 * BEHAVIOUR.gps_sigma_m


def test_gps_noise_is_a_few_metres_and_fixes_are_sometimes_lost() -> None:
    profile = replace(moving_profile(), maintenance=True)
    rng = np.random.default_rng(12)
    state = initial_state(CITY, BEHAVIOUR, profile, rng, T0)
    errors, lost = [], 0
    for k in range(1, 5001):
        state, reading = step(CITY, BEHAVIOUR, profile, state, T0 + k, rng)
        if reading.fix == 0:
            lost += 1
            assert reading.lat is None and reading.lon is None and reading.acc_m is None
        else:
            x, y = CITY.to_xy(reading.lon, reading.lat)
            errors.extend((x - state.pos[0], y - state.pos[1]))
    assert 2.0 < float(np.std(errors)) < 4.5
    assert 0.01 < lost / 5000 < 0.03


def test_battery_drains_while_riding_and_odometer_grows() -> None:
    profile = moving_profile()
    rng = np.random.default_rng(13)
    state = replace(initial_state(CITY, BEHAVIOUR, profile, rng, T0), battery_pct=90.0, park_until=T0)
    state, _ = step(CITY, BEHAVIOUR, profile, state, T0 + 1, rng)
    assert state.mode is Mode.RIDING
    start_battery, start_odo = state.battery_pct, state.odometer_m
    t = T0 + 1
    while state.mode is Mode.RIDING:
        t += 1
        state, _ = step(CITY, BEHAVIOUR, profile, state, t, rng)
    ridden_km = (state.odometer_m - start_odo) / 1000
    assert ridden_km > 0.1
    assert start_battery - state.battery_pct == pytest.approx(ridden_km * 1.5, rel=1e-6)


def test_battery_recovers_on_a_charging_dock_and_not_elsewhere() -> None:
    dock = next((c, r) for c in range(CITY.columns) for r in range(CITY.rows) if CITY.is_charging_spot(c, r))
    plain = next((c, r) for c in range(CITY.columns) for r in range(CITY.rows) if not CITY.is_charging_spot(c, r))
    profile = moving_profile()
    rng = np.random.default_rng(14)
    base = replace(initial_state(CITY, BEHAVIOUR, profile, rng, T0), battery_pct=50.0, park_until=T0 + 10_000)
    charged, _ = step(CITY, BEHAVIOUR, profile, replace(base, pos=CITY.intersection(*dock)), T0 + 3600, rng)
    idle, _ = step(CITY, BEHAVIOUR, profile, replace(base, pos=CITY.intersection(*plain)), T0 + 3600, rng)
    assert charged.battery_pct == pytest.approx(50.0 + BEHAVIOUR.charge_pct_per_h)
    assert idle.battery_pct == 50.0


def test_an_empty_battery_is_swapped_eventually_and_never_rides() -> None:
    profile = moving_profile()
    rng = np.random.default_rng(15)
    plain = next((c, r) for c in range(CITY.columns) for r in range(CITY.rows) if not CITY.is_charging_spot(c, r))
    state = replace(
        initial_state(CITY, BEHAVIOUR, profile, rng, T0), battery_pct=5.0, park_until=T0, pos=CITY.intersection(*plain)
    )
    t = T0
    while state.battery_pct < 100.0:
        t += 10
        state, _ = step(CITY, BEHAVIOUR, profile, state, t, rng)
        if state.battery_pct < BEHAVIOUR.low_battery_pct:
            assert state.mode is Mode.PARKED
        assert t < T0 + 20 * BEHAVIOUR.swap_mean_s


def test_commands_change_the_vehicle() -> None:
    profile = moving_profile()
    rng = np.random.default_rng(16)
    parked = replace(initial_state(CITY, BEHAVIOUR, profile, rng, T0), park_until=T0 + 9999, battery_pct=80.0)

    unlocked, status, _ = apply_command(BEHAVIOUR, parked, "unlock", {}, T0)
    assert status == "ok" and not unlocked.locked
    riding, _ = step(CITY, BEHAVIOUR, profile, unlocked, T0 + 1, rng)
    assert riding.mode is Mode.RIDING

    limited, status, _ = apply_command(BEHAVIOUR, riding, "speed_limit", {"kmh": 10}, T0 + 1)
    assert status == "ok"
    _, reading = step(CITY, BEHAVIOUR, profile, limited, T0 + 2, rng)
    assert reading.speed_kmh <= 10 * 1.2

    stopped, status, _ = apply_command(BEHAVIOUR, riding, "lock", {}, T0 + 2)
    assert status == "ok" and stopped.locked and stopped.mode is Mode.PARKED
    held, _ = step(CITY, BEHAVIOUR, profile, stopped, stopped.park_until + 60, rng)
    assert held.mode is Mode.PARKED and held.locked  # a remote lock holds it past its parking time
    freed, status, _ = apply_command(BEHAVIOUR, held, "unlock", {}, stopped.park_until + 61)
    assert status == "ok" and step(CITY, BEHAVIOUR, profile, freed, stopped.park_until + 62, rng)[0].mode is Mode.RIDING

    alarmed, status, _ = apply_command(BEHAVIOUR, parked, "alarm", {"duration_s": 5}, T0)
    assert status == "ok" and alarmed.alarm_until == T0 + 5

    assert apply_command(BEHAVIOUR, parked, "locate", {}, T0)[1] == "ok"
    assert apply_command(BEHAVIOUR, parked, "explode", {}, T0)[1] == "rejected"
    assert apply_command(BEHAVIOUR, parked, "set_speed_limit", {"kmh": "fast"}, T0)[1] == "rejected"
    assert apply_command(BEHAVIOUR, parked, "set_speed_limit", {"kmh": math.nan}, T0)[1] == "rejected"
    assert apply_command(BEHAVIOUR, parked, "alarm", {"duration_s": -1}, T0)[1] == "rejected"
    in_maintenance = replace(parked, mode=Mode.MAINTENANCE)
    assert apply_command(BEHAVIOUR, in_maintenance, "unlock", {}, T0)[1] == "rejected"


def test_time_going_backwards_moves_nothing() -> None:
    profile = moving_profile()
    rng = np.random.default_rng(17)
    state = replace(initial_state(CITY, BEHAVIOUR, profile, rng, T0), park_until=T0)
    state, _ = step(CITY, BEHAVIOUR, profile, state, T0 + 10, rng)
    state, _ = step(CITY, BEHAVIOUR, profile, state, T0 + 20, rng)
    again, _ = step(CITY, BEHAVIOUR, profile, state, T0 + 5, rng)
    assert again.pos == state.pos and again.last_t == state.last_t


@pytest.mark.parametrize("box", ["1,2,3", "13.5,52.4,13.3,52.6", "x,1,2,3", "13.3,52.45,13.3001,52.4501"])
def test_bad_city_boxes_are_refused(box: str) -> None:
    from simulators.city import CityError

    with pytest.raises(CityError):
        City.parse_box(box)
