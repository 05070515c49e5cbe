"""One vehicle's life as a pure state machine: parked (locked) -> riding (unlocked) -> parked.

`step(city, behaviour, profile, state, now, rng)` returns the next state and what the tracker would
report at `now`. The only impurity is the numpy generator handed in, owned by the caller, one per
device and seeded from (fleet seed, device index): the same seed and the same sequence of `now`
values give the same readings, whatever else the fleet contains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from simulators.city import City, Point, advance, heading_deg, route

MAINTENANCE_FAULTS = ("E12", "brake_sensor", "motor_temp", "E31")


class Mode(StrEnum):
    PARKED = "parked"
    RIDING = "riding"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Fleet-wide physics and habits. Defaults describe shared city e-bikes."""

    min_speed_kmh: float = 12.0
    max_speed_kmh: float = 25.0
    drain_pct_per_km: tuple[float, float] = (1.2, 2.2)  # per-vehicle range: battery and rider weight vary
    charge_pct_per_h: float = 25.0  # on a dock: empty to full in four hours
    low_battery_pct: float = 15.0  # below this a vehicle is not rented out
    swap_mean_s: float = 1800.0  # how long a low vehicle waits for the battery-swap crew
    park_mean_s: float = 600.0
    park_min_s: float = 60.0
    trip_max_blocks: int = 12
    gps_sigma_m: float = 3.0
    lost_fix_p: float = 0.02
    maintenance_share: float = 0.05
    alarm_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Profile:
    """What never changes about one vehicle."""

    device_id: str
    index: int
    maintenance: bool
    drain_pct_per_km: float
    fault_codes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VehicleState:
    mode: Mode
    pos: Point  # metres on the city plane, always on a street
    route: tuple[Point, ...]
    leg: int
    cruise_kmh: float
    heading_deg: float
    park_until: float
    battery_pct: float
    odometer_m: float
    locked: bool
    speed_limit_kmh: float | None
    alarm_until: float
    last_t: float
    held: bool = False  # locked remotely: stays parked until a remote unlock


@dataclass(frozen=True, slots=True)
class Reading:
    """What the tracker reports. `time` is the device clock in Unix seconds; no fix means no lat/lon."""

    time: float
    lat: float | None
    lon: float | None
    alt_m: float | None
    speed_kmh: float
    heading_deg: float
    acc_m: float | None
    fix: int
    sats: int
    hdop: float | None
    battery_pct: float
    odometer_m: float
    locked: bool
    faults: tuple[str, ...]
    alarm: bool


def make_profile(seed: int, index: int, device_id: str, behaviour: Behaviour) -> Profile:
    rng = np.random.default_rng([seed, index, 0])
    u = rng.random(3).tolist()
    low, high = behaviour.drain_pct_per_km
    maintenance = bool(u[0] < behaviour.maintenance_share)
    codes = (MAINTENANCE_FAULTS[int(u[2] * len(MAINTENANCE_FAULTS))],) if maintenance else ()
    return Profile(device_id, index, maintenance, float(low + (high - low) * u[1]), codes)


def movement_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 1])


def initial_state(
    city: City, behaviour: Behaviour, profile: Profile, rng: np.random.Generator, now: float
) -> VehicleState:
    col, row = city.random_spot(rng)
    u = rng.random(3).tolist()
    return VehicleState(
        mode=Mode.MAINTENANCE if profile.maintenance else Mode.PARKED,
        pos=city.intersection(col, row),
        route=(),
        leg=0,
        cruise_kmh=0.0,
        heading_deg=float(u[0] * 360.0),
        park_until=now + float(u[1]) * behaviour.park_mean_s,  # staggered: not all leave at once
        battery_pct=float(30.0 + 70.0 * u[2]),
        odometer_m=float(rng.uniform(0, 3_000_000)),
        locked=True,
        speed_limit_kmh=None,
        alarm_until=0.0,
        last_t=now,
    )


def step(
    city: City,
    behaviour: Behaviour,
    profile: Profile,
    state: VehicleState,
    now: float,
    rng: np.random.Generator,
) -> tuple[VehicleState, Reading]:
    """Advance to `now` and report. A clock going backwards is treated as no time passing."""
    dt = max(0.0, now - state.last_t)
    if state.mode is Mode.RIDING:
        state = _ride(city, behaviour, profile, state, now, dt, rng)
    elif state.mode is Mode.PARKED:
        state = _park(city, behaviour, state, now, dt, rng)
    state = replace(state, last_t=max(now, state.last_t))
    return state, _observe(city, behaviour, profile, state, now, rng)


def _ride(
    city: City,
    behaviour: Behaviour,
    profile: Profile,
    state: VehicleState,
    now: float,
    dt: float,
    rng: np.random.Generator,
) -> VehicleState:
    speed = _effective_kmh(state)
    reach_m = speed / 3.6 * dt
    if profile.drain_pct_per_km > 0:  # an empty battery ends the ride where it is
        reach_m = min(reach_m, state.battery_pct / profile.drain_pct_per_km * 1000.0)
    leg, pos, covered = advance(state.route, state.leg, state.pos, reach_m)
    heading = heading_deg(pos, state.route[leg + 1]) if leg < len(state.route) - 1 else state.heading_deg
    if covered > 0 and leg < len(state.route) - 1 and pos != state.route[leg]:
        heading = heading_deg(state.route[leg], state.route[leg + 1])
    battery = max(0.0, state.battery_pct - covered / 1000.0 * profile.drain_pct_per_km)
    state = replace(
        state, leg=leg, pos=pos, heading_deg=heading, battery_pct=battery, odometer_m=state.odometer_m + covered
    )
    if leg >= len(state.route) - 1 or battery <= 0.0:
        return _stop(behaviour, state, now, rng)
    return state


def _stop(behaviour: Behaviour, state: VehicleState, now: float, rng: np.random.Generator) -> VehicleState:
    park_s = behaviour.park_min_s + float(rng.exponential(behaviour.park_mean_s))
    return replace(state, mode=Mode.PARKED, route=(), leg=0, cruise_kmh=0.0, locked=True, park_until=now + park_s)


def _park(
    city: City, behaviour: Behaviour, state: VehicleState, now: float, dt: float, rng: np.random.Generator
) -> VehicleState:
    battery = state.battery_pct
    spot = city.nearest_intersection(*state.pos)
    if city.is_charging_spot(*spot) and state.pos == city.intersection(*spot):  # docked, not mid-block
        battery = min(100.0, battery + behaviour.charge_pct_per_h * dt / 3600.0)
    if battery < behaviour.low_battery_pct and rng.random() < -math.expm1(-dt / behaviour.swap_mean_s):
        battery = 100.0  # the swap crew came by
    state = replace(state, battery_pct=battery)
    if state.held or now < state.park_until or battery < behaviour.low_battery_pct:
        return state
    return start_trip(city, behaviour, state, rng)


def start_trip(city: City, behaviour: Behaviour, state: VehicleState, rng: np.random.Generator) -> VehicleState:
    """Rent the vehicle out: a destination a few blocks away, a route along the streets, a pace."""
    col, row = city.nearest_intersection(*state.pos)
    goal = city.destination(rng, col, row, behaviour.trip_max_blocks)
    path = route(city, rng, state.pos, goal)
    cruise = float(rng.uniform(behaviour.min_speed_kmh, behaviour.max_speed_kmh))
    return replace(state, mode=Mode.RIDING, route=path, leg=0, cruise_kmh=cruise, locked=False)


def _effective_kmh(state: VehicleState) -> float:
    if state.speed_limit_kmh is None:
        return state.cruise_kmh
    return min(state.cruise_kmh, state.speed_limit_kmh)


def _observe(
    city: City,
    behaviour: Behaviour,
    profile: Profile,
    state: VehicleState,
    now: float,
    rng: np.random.Generator,
) -> Reading:
    """The tracker's view: GPS noise of a few metres, now and then no fix at all."""
    u = rng.random(4).tolist()
    n = rng.standard_normal(4).tolist()
    moving = state.mode is Mode.RIDING
    speed = max(0.0, _effective_kmh(state) * (1.0 + 0.04 * n[2])) if moving else 0.0
    common = {
        "time": now,
        "speed_kmh": round(speed, 1),
        "heading_deg": round(state.heading_deg % 360.0, 1) % 360.0,
        "battery_pct": round(state.battery_pct, 1),
        "odometer_m": round(state.odometer_m, 1),
        "locked": state.locked,
        "faults": profile.fault_codes,
        "alarm": now < state.alarm_until,
    }
    if u[0] < behaviour.lost_fix_p:
        return Reading(lat=None, lon=None, alt_m=None, acc_m=None, fix=0, sats=int(u[1] * 4), hdop=None, **common)
    lon, lat = city.to_lonlat(state.pos[0] + behaviour.gps_sigma_m * n[0], state.pos[1] + behaviour.gps_sigma_m * n[1])
    hdop = round(0.6 + 1.2 * float(u[2]), 2)
    return Reading(
        lat=round(lat, 7),
        lon=round(lon, 7),
        alt_m=round(34.0 + 2.0 * n[3], 1),
        acc_m=round(behaviour.gps_sigma_m * hdop * 1.5, 1),
        fix=2 if u[3] < 0.05 else 3,
        sats=int(5 + u[1] * 8),
        hdop=hdop,
        **common,
    )


def apply_command(
    behaviour: Behaviour, state: VehicleState, cmd: str, args: dict[str, Any], now: float
) -> tuple[VehicleState, str, str]:
    """Carry out a command (docs/protocol.md); returns the new state, the ack result (`ok` or
    `rejected`) and a detail text. A remote lock holds the vehicle parked until a remote unlock."""
    if cmd == "lock":
        if state.mode is Mode.RIDING:
            until = now + behaviour.park_mean_s
            state = replace(state, mode=Mode.PARKED, route=(), leg=0, cruise_kmh=0.0, park_until=until)
        return replace(state, locked=True, held=True), "ok", "locked"
    if cmd == "unlock":
        if state.mode is Mode.MAINTENANCE:
            return state, "rejected", "vehicle is in maintenance"
        return replace(state, locked=False, held=False, park_until=min(state.park_until, now)), "ok", "unlocked"
    if cmd == "alarm":
        seconds = _number(args.get("duration_s", behaviour.alarm_s))
        if seconds is None or not 0 < seconds <= 3600:
            return state, "rejected", "duration_s must be a number in (0, 3600]"
        return replace(state, alarm_until=now + seconds), "ok", f"alarm for {seconds:g} s"
    if cmd in ("set_speed_limit", "speed_limit"):
        return _speed_limit(state, args)
    if cmd == "locate":
        return state, "ok", "a fix follows at once"
    return state, "rejected", f"unknown action {cmd[:40]!r}"


def _speed_limit(state: VehicleState, args: dict[str, Any]) -> tuple[VehicleState, str, str]:
    raw = next((args[k] for k in ("kmh", "speed_kmh", "limit_kmh") if k in args), None)
    if raw is None:
        return replace(state, speed_limit_kmh=None), "ok", "speed limit removed"
    kmh = _number(raw)
    if kmh is None or not 0 < kmh <= 45:
        return state, "rejected", "speed limit must be a number of km/h in (0, 45]"
    return replace(state, speed_limit_kmh=kmh), "ok", f"speed limited to {kmh:g} km/h"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
