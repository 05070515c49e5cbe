"""What a simulation run is (`SimConfig`) and who is in the fleet (`roster`), both pure.

Every per-device choice (format, command habit, clock error, vehicle profile) comes from a generator
seeded with (seed, device index, purpose), so device 17 is the same bike in a fleet of 20 as in a
fleet of 10,000, and a run can be repeated exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from simulators.city import City
from simulators.encode import Format, encode_json, encode_nmea, encode_owntracks, topic_for
from simulators.faults import NO_FIX, FaultConfig, Outgoing, clock_skew_s
from simulators.vehicle import Behaviour, Profile, Reading, make_profile

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIXED = "mixed"
MIX_SHARES = ((Format.JSON, 0.5), (Format.NMEA, 0.25), (Format.OWNTRACKS, 0.25))


class SimConfigError(ValueError):
    """A simulation that cannot run as asked (bad numbers, no bound, bad id prefix)."""


class CommandHabit(StrEnum):
    """How a device treats commands: the odd ones exercise retries and offline delivery."""

    PROMPT = "prompt"
    SLOW = "slow"  # acknowledges long after the usual delay
    DROP = "drop"  # applies nothing, never acknowledges
    OFFLINE = "offline"  # keeps dropping off the network; commands wait in the broker session
    TWICE = "twice"  # acknowledges every command twice
    REJECT = "reject"  # refuses every command


@dataclass(frozen=True, slots=True)
class SimConfig:
    devices: int = 10
    rate: float = 1.0  # reports per second per device (OwnTracks devices at most 1/s: tst is whole seconds)
    fmt: str = "json"  # json | nmea | owntracks | mixed
    seed: int = 1
    city: City = field(default_factory=City)
    behaviour: Behaviour = field(default_factory=Behaviour)
    faults: FaultConfig = field(default_factory=FaultConfig)
    ack_delay_s: float = 0.2
    slow_ack_delay_s: float = 8.0
    offline_share: float = 0.0
    slow_share: float = 0.0
    drop_share: float = 0.0
    twice_share: float = 0.0
    reject_share: float = 0.0
    habits: tuple[tuple[int, CommandHabit], ...] = ()  # (device index, habit): chosen, not drawn
    online_s: tuple[float, float] = (30.0, 120.0)  # an offline-habit device's time between outages
    duration_s: float | None = 60.0
    count: int | None = None  # total reports (including faulty ones) for the whole fleet
    id_prefix: str = "sim-"
    connect_rate: float = 200.0  # new connections per second, fleet-wide (storms ignore it)
    max_payload_bytes: int = 16 * 1024  # the gateway's limit: buffered batches are split to fit
    session_expiry_s: int = 3600  # how long the broker keeps commands for an offline device
    keepalive_s: int = 60
    start_time: float | None = None  # the simulated clock's start; None means the wall clock

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise SimConfigError(f"devices must be 1..100000, got {self.devices}")
        if not (math.isfinite(self.rate) and 0 < self.rate <= 100):
            raise SimConfigError(f"rate must be in (0, 100] reports per second per device, got {self.rate}")
        if self.fmt not in (*(f.value for f in Format), MIXED):
            raise SimConfigError(f"format must be json, nmea, owntracks or mixed, got {self.fmt!r}")
        if self.duration_s is None and self.count is None:
            raise SimConfigError("give a duration or a count: a run must stop by itself")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise SimConfigError(f"duration must be a positive number of seconds, got {self.duration_s}")
        if self.count is not None and self.count < 1:
            raise SimConfigError(f"count must be at least 1, got {self.count}")
        shares = (self.offline_share, self.slow_share, self.drop_share, self.twice_share, self.reject_share)
        if not all(0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise SimConfigError("offline, slow, drop, twice and reject shares must be in [0, 1], at most 1 in all")
        if min(self.ack_delay_s, self.slow_ack_delay_s) < 0 or self.connect_rate <= 0:
            raise SimConfigError("ack delays must be >= 0 and connect_rate > 0")
        if not DEVICE_ID.match(device_id(self, self.devices - 1)):
            raise SimConfigError(f"id prefix {self.id_prefix!r} does not make valid device ids")


def device_id(config: SimConfig, index: int) -> str:
    return f"{config.id_prefix}{index:05d}"


def device_ids(config: SimConfig) -> list[str]:
    """The ids to register (with credentials) before a run."""
    return [device_id(config, i) for i in range(config.devices)]


@dataclass(frozen=True, slots=True)
class DeviceRole:
    profile: Profile
    fmt: Format
    habit: CommandHabit
    skew_s: float
    epoch_ts: bool  # JSON `ts` as a number instead of an ISO string
    talker: str  # NMEA talker id: GPS-only or multi-constellation receivers
    tid: str  # OwnTracks tracker id
    phase: float  # 0..1 of a report interval, so devices do not all report on the same tick
    peer: str  # another device of the fleet, for id-mismatch and foreign-topic faults

    @property
    def device_id(self) -> str:
        return self.profile.device_id


def role(config: SimConfig, index: int) -> DeviceRole:
    rng = np.random.default_rng([config.seed, index, 2])
    u = rng.random(5)
    ident = device_id(config, index)
    fmt = Format(config.fmt) if config.fmt != MIXED else _pick_format(float(u[0]))
    shares = (config.offline_share, config.slow_share, config.drop_share, config.twice_share, config.reject_share)
    habits = (CommandHabit.OFFLINE, CommandHabit.SLOW, CommandHabit.DROP, CommandHabit.TWICE, CommandHabit.REJECT)
    habit = next((h for h, e in zip(habits, np.cumsum(shares), strict=True) if u[1] < e), CommandHabit.PROMPT)
    habit = dict(config.habits).get(index, habit)
    peer_index = index + 1 + int(u[3] * (config.devices - 1))
    if config.devices > 1:
        peer_index %= config.devices
    return DeviceRole(
        profile=make_profile(config.seed, index, ident, config.behaviour),
        fmt=fmt,
        habit=habit,
        skew_s=clock_skew_s(rng, config.faults),
        epoch_ts=bool(u[2] < 0.5),
        talker="GP" if index % 3 else "GN",
        tid=f"{index % 1296:03d}"[-2:],
        phase=float(u[4]),
        peer=device_id(config, peer_index),
    )


def _pick_format(u: float) -> Format:
    edge = 0.0
    for fmt, share in MIX_SHARES:
        edge += share
        if u < edge:
            return fmt
    return Format.JSON


def report_interval(config: SimConfig, r: DeviceRole) -> float:
    """Seconds between reports; OwnTracks `tst` is whole seconds, so at most one a second there."""
    return 1.0 / min(config.rate, 1.0) if r.fmt is Format.OWNTRACKS else 1.0 / config.rate


def report_message(r: DeviceRole, reading: Reading) -> Outgoing | None:
    """A regular report as this device's format encodes it, with what the gateway makes of it."""
    device = r.device_id
    if r.fmt is Format.JSON:
        return Outgoing(topic_for(r.fmt, device), encode_json(reading, device, epoch_ts=r.epoch_ts))
    if r.fmt is Format.NMEA:
        payload = encode_nmea(reading, r.talker)
        return Outgoing(topic_for(r.fmt, device), payload, *((NO_FIX, 0) if not reading.fix else ()))
    payload = encode_owntracks(reading, r.tid)  # None without a fix: OwnTracks cannot say "no fix"
    return None if payload is None else Outgoing(topic_for(r.fmt, device), payload)
