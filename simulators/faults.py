"""Fault injection: bad things real trackers do, each switchable, each with the verdict it must get.

Every injected message is an `Outgoing` that carries what the gateway is expected to make of it:
`stored` (one record per reading), `duplicate` (a resend of something already stored), `no_fix`
(an NMEA epoch without a fix, counted and dropped by the gateway), a dead-letter reason code, or
`acl_denied` (the broker refuses it, nothing reaches ingest). Tests and benchmarks
add these up in a `Ledger` and compare with the database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum

import numpy as np
import orjson

from simulators.encode import nmea_sentences, record
from simulators.vehicle import Reading

STORED = "stored"
DUPLICATE = "duplicate"
ACL_DENIED = "acl_denied"
NO_FIX = "no_fix"  # an NMEA epoch without a fix: counted by the gateway, neither stored nor dead-lettered


class FaultKind(StrEnum):
    # One message each, in place of the regular report:
    MALFORMED_JSON = "malformed_json"
    BAD_CHECKSUM = "bad_checksum"
    OUT_OF_RANGE = "out_of_range"
    NOT_FINITE = "not_finite"
    OVERSIZE = "oversize"
    ID_MISMATCH = "id_mismatch"
    FUTURE_TIME = "future_time"
    FOREIGN_TOPIC = "foreign_topic"
    # Accepted, but must be stored exactly once / in its place in time:
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    OFFLINE_BATCH = "offline_batch"  # chance per report to drop off the network and buffer
    CLOCK_SKEW = "clock_skew"  # share of devices whose clock is off by up to max_skew_s
    RECONNECT_STORM = "reconnect_storm"  # chance per second that many devices drop at once


EXPECTED_REASON: dict[FaultKind, str] = {
    FaultKind.MALFORMED_JSON: "bad_json",
    FaultKind.BAD_CHECKSUM: "bad_checksum",
    FaultKind.OUT_OF_RANGE: "out_of_range",
    FaultKind.NOT_FINITE: "not_finite",
    FaultKind.OVERSIZE: "oversize",
    FaultKind.ID_MISMATCH: "id_mismatch",
    FaultKind.FUTURE_TIME: "future_time",
    FaultKind.FOREIGN_TOPIC: ACL_DENIED,
}
PER_MESSAGE = (*EXPECTED_REASON, FaultKind.DUPLICATE, FaultKind.OUT_OF_ORDER)


class FaultConfigError(ValueError):
    """A fault switch that is not a known kind or not a probability."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Probabilities per kind (all off by default). Per-message kinds together must stay <= 1."""

    malformed_json: float = 0.0
    bad_checksum: float = 0.0
    out_of_range: float = 0.0
    not_finite: float = 0.0
    oversize: float = 0.0
    id_mismatch: float = 0.0
    future_time: float = 0.0
    foreign_topic: float = 0.0
    duplicate: float = 0.0
    out_of_order: float = 0.0
    offline_batch: float = 0.0
    clock_skew: float = 0.0
    reconnect_storm: float = 0.0
    oversize_bytes: int = 64 * 1024  # above the gateway's default 16 KiB payload limit
    future_s: float = 3600.0  # well past the 300 s the gateway tolerates
    max_skew_s: float = 240.0  # skewed clocks stay inside that tolerance: skew is not a reject
    offline_s: tuple[float, float] = (20.0, 90.0)
    storm_share: float = 0.5

    def __post_init__(self) -> None:
        for kind in FaultKind:
            p = getattr(self, kind.value)
            if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
                raise FaultConfigError(f"{kind.value} must be a probability in [0, 1], got {p!r}")
        if sum(getattr(self, k.value) for k in PER_MESSAGE) > 1.0 + 1e-9:
            raise FaultConfigError("per-message fault probabilities add up to more than 1")
        if self.oversize_bytes < 1 or self.future_s <= 300 or not 0 <= self.max_skew_s < 300:
            raise FaultConfigError("oversize_bytes >= 1, future_s > 300 and 0 <= max_skew_s < 300 required")
        if not 0 < self.offline_s[0] <= self.offline_s[1] or not 0 < self.storm_share <= 1:
            raise FaultConfigError("offline_s must be 0 < low <= high and storm_share in (0, 1]")

    @classmethod
    def every(cls, p: float) -> FaultConfig:
        """All kinds switched on; per-message kinds share `p` between them."""
        each = p / len(PER_MESSAGE)
        values = {k.value: (each if k in PER_MESSAGE else p) for k in FaultKind}
        return cls(**values)

    @classmethod
    def parse(cls, text: str) -> FaultConfig:
        """`none`, `all[=p]`, or `kind=p,kind=p` (kind alone means 0.01), as typed on a command line."""
        text = text.strip()
        if text in ("", "none"):
            return cls()
        if text.startswith("all"):
            return cls.every(_probability(text.partition("=")[2] or "0.05", "all"))
        known = {f.name for f in fields(cls)} & {k.value for k in FaultKind}
        values: dict[str, float] = {}
        for part in text.split(","):
            name, _, p = part.strip().partition("=")
            if name not in known:
                raise FaultConfigError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            values[name] = _probability(p or "0.01", name)
        return cls(**values)

    def enabled(self) -> tuple[FaultKind, ...]:
        return tuple(k for k in FaultKind if getattr(self, k.value) > 0)


def _probability(text: str, name: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise FaultConfigError(f"{name}: {text!r} is not a number") from None
    if not 0.0 <= p <= 1.0:
        raise FaultConfigError(f"{name}: {p} is not a probability in [0, 1]")
    return p


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT publish and what the gateway should make of it."""

    topic: str
    payload: bytes
    expect: str = STORED
    records: int = 1  # readings the gateway stores from it (0 unless expect is `stored`)
    kind: FaultKind | None = None


@dataclass(slots=True)
class Ledger:
    """Running tally of expectations, kept by the shell and compared with the store by tests."""

    messages: int = 0
    stored_records: int = 0
    duplicates: int = 0
    acl_denied: int = 0
    no_fix: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def add(self, out: Outgoing) -> None:
        self.messages += 1
        if out.kind is not None:
            self.faults[out.kind.value] += 1
        if out.expect == STORED:
            self.stored_records += out.records
        elif out.expect == DUPLICATE:
            self.duplicates += 1
        elif out.expect == ACL_DENIED:
            self.acl_denied += 1
        elif out.expect == NO_FIX:
            self.no_fix += 1
        else:
            self.rejects[out.expect] += 1


def choose(rng: np.random.Generator, config: FaultConfig) -> FaultKind | None:
    """Which per-message fault (if any) replaces or shadows this report. Always one draw."""
    u = float(rng.random())
    edge = 0.0
    for kind in PER_MESSAGE:
        edge += getattr(config, kind.value)
        if u < edge:
            return kind
    return None


def clock_skew_s(rng: np.random.Generator, config: FaultConfig) -> float:
    """This device's clock error: zero for most, up to ±max_skew_s for a `clock_skew` share."""
    u = rng.random(2)
    if u[0] >= config.clock_skew:
        return 0.0
    return float((2 * u[1] - 1) * config.max_skew_s) or 1.0


def reject(
    kind: FaultKind,
    reading: Reading,
    device_id: str,
    other_id: str,
    config: FaultConfig,
    rng: np.random.Generator,
) -> Outgoing:
    """The faulty message for a rejecting kind, with the dead-letter reason it must get."""
    if kind not in EXPECTED_REASON:
        raise FaultConfigError(f"{kind.value} is not a rejecting fault")
    base = _with_position(record(reading, device_id, epoch_ts=False))
    own = f"fleet/{device_id}/telemetry"
    expect = EXPECTED_REASON[kind]
    if kind is FaultKind.MALFORMED_JSON:
        payload = _malformed(orjson.dumps(base), rng)
    elif kind is FaultKind.BAD_CHECKSUM:
        return Outgoing(f"fleet/{device_id}/nmea", _bad_checksum(reading), expect, 0, kind)
    elif kind is FaultKind.OUT_OF_RANGE:
        u = rng.random(2)
        key, value = ("lat", 91.0 + 30 * u[1]) if u[0] < 0.5 else ("lon", -181.0 - 20 * u[1])
        payload = orjson.dumps({**base, key: round(float(value), 5)})
    elif kind is FaultKind.NOT_FINITE:
        # A number too large for a double: lenient parsers read it as ±infinity. (Bare NaN/Infinity
        # literals are not JSON at all and earn `bad_json`, which `malformed_json` covers.)
        literal = (b"1e999", b"-1e999", b"2.5e400")[int(rng.integers(3))]
        payload = orjson.dumps({**base, "lat": 0.0}).replace(b'"lat":0.0', b'"lat":' + literal, 1)
    elif kind is FaultKind.OVERSIZE:
        payload = orjson.dumps({**base, "debug": "x" * config.oversize_bytes})
    elif kind is FaultKind.ID_MISMATCH:
        payload = orjson.dumps({**base, "id": other_id})
    elif kind is FaultKind.FUTURE_TIME:
        future = replace(reading, time=reading.time + config.future_s)
        payload = orjson.dumps(_with_position(record(future, device_id, epoch_ts=True)))
    else:  # FOREIGN_TOPIC: a well-formed report, on another device's topic
        return Outgoing(f"fleet/{other_id}/telemetry", orjson.dumps({**base, "id": other_id}), expect, 0, kind)
    return Outgoing(own, payload, expect, 0, kind)


def _with_position(rec: dict[str, object]) -> dict[str, object]:
    """Position faults need a position: a no-fix reading gets a plausible one and fix 3."""
    if "lat" not in rec:
        rec = {**rec, "lat": 52.52, "lon": 13.405}
    return {**rec, "fix": 3}


def _malformed(payload: bytes, rng: np.random.Generator) -> bytes:
    variant = int(rng.integers(3))
    cut = int(rng.integers(1, len(payload) - 1))
    if variant == 0:
        return payload[:cut]  # connection cut mid-message: any proper prefix of an object is invalid
    if variant == 1:
        return payload[:cut] + b"\xff\xfe"  # and some garbage bytes
    return payload.replace(b'"', b"'", 2)  # single-quoted keys, a classic firmware bug


def _bad_checksum(reading: Reading) -> bytes:
    rmc = nmea_sentences(reading)[0]
    body, _, checksum = rmc.rpartition("*")
    wrong = f"{int(checksum, 16) ^ 0x5A:02X}"
    return f"{body}*{wrong}\r\n".encode("ascii")
