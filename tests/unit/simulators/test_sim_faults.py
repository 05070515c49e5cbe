"""Each injected fault carries the verdict the gateway must reach, and the payload really earns it."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime

import numpy as np
import orjson
import pynmea2
import pytest

from simulators.encode import nmea_checksum
from simulators.faults import (
    ACL_DENIED,
    DUPLICATE,
    EXPECTED_REASON,
    PER_MESSAGE,
    STORED,
    FaultConfig,
    FaultConfigError,
    FaultKind,
    Ledger,
    Outgoing,
    choose,
    clock_skew_s,
    reject,
)
from simulators.vehicle import Reading

T = 1_795_000_000.0
FIX = Reading(
    time=T, lat=52.52, lon=13.405, alt_m=34.0, speed_kmh=15.0, heading_deg=90.0, acc_m=4.0, fix=3, sats=8,
    hdop=0.9, battery_pct=80.0, odometer_m=100.0, locked=False, faults=(), alarm=False,
)  # fmt: skip
NO_FIX = Reading(
    time=T, lat=None, lon=None, alt_m=None, speed_kmh=0.0, heading_deg=0.0, acc_m=None, fix=0, sats=1,
    hdop=None, battery_pct=80.0, odometer_m=100.0, locked=True, faults=(), alarm=False,
)  # fmt: skip
CONFIG = FaultConfig()


def make(kind: FaultKind, reading: Reading = FIX, seed: int = 0) -> Outgoing:
    return reject(kind, reading, "bike-1", "bike-2", CONFIG, np.random.default_rng(seed))


def lenient(payload: bytes) -> dict[str, object]:
    """What a permissive parser (Python's json) sees; the gateway must still refuse it."""
    return json.loads(payload)


def ts_of(doc: dict[str, object]) -> float:
    ts = doc["ts"]
    return float(ts) if isinstance(ts, int | float) else datetime.fromisoformat(str(ts)).timestamp()


@pytest.mark.parametrize("reading", [FIX, NO_FIX])
@pytest.mark.parametrize("seed", range(6))
def test_each_rejecting_fault_earns_its_reason(reading: Reading, seed: int) -> None:
    for kind, reason in EXPECTED_REASON.items():
        out = make(kind, reading, seed)
        assert out.expect == reason and out.kind is kind and out.records == 0
        own = "fleet/bike-1/nmea" if kind is FaultKind.BAD_CHECKSUM else "fleet/bike-1/telemetry"
        if kind is FaultKind.FOREIGN_TOPIC:
            assert out.topic == "fleet/bike-2/telemetry" and reason == ACL_DENIED
            assert orjson.loads(out.payload)["id"] == "bike-2"  # a well-formed report, just not ours
            continue
        assert out.topic == own
        check = CHECKS[kind]
        check(out.payload)


def _bad_json(payload: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(payload)
    with pytest.raises(ValueError):
        json.loads(payload)


def _bad_checksum(payload: bytes) -> None:
    line = payload.decode("ascii").strip()
    with pytest.raises(pynmea2.ChecksumError):
        pynmea2.parse(line, check=True)
    body = line[1 : line.index("*")]
    assert nmea_checksum(body) != line[-2:]
    fixed = pynmea2.parse(f"${body}*{nmea_checksum(body)}", check=True)  # only the checksum is wrong
    assert fixed.sentence_type == "RMC"


def _out_of_range(payload: bytes) -> None:
    doc = orjson.loads(payload)
    assert abs(doc["lat"]) > 90 or abs(doc["lon"]) > 180
    assert doc["fix"] == 3


def _not_finite(payload: bytes) -> None:
    doc = lenient(payload)
    assert not math.isfinite(doc["lat"]) and math.isfinite(doc["lon"])


def _oversize(payload: bytes) -> None:
    assert len(payload) > CONFIG.oversize_bytes
    assert orjson.loads(payload)["v"] == 1  # otherwise valid: only the size is wrong


def _id_mismatch(payload: bytes) -> None:
    assert orjson.loads(payload)["id"] == "bike-2"


def _future_time(payload: bytes) -> None:
    assert ts_of(orjson.loads(payload)) > T + 300


CHECKS = {
    FaultKind.MALFORMED_JSON: _bad_json,
    FaultKind.BAD_CHECKSUM: _bad_checksum,
    FaultKind.OUT_OF_RANGE: _out_of_range,
    FaultKind.NOT_FINITE: _not_finite,
    FaultKind.OVERSIZE: _oversize,
    FaultKind.ID_MISMATCH: _id_mismatch,
    FaultKind.FUTURE_TIME: _future_time,
}


def test_reason_codes_are_the_agreed_ones() -> None:
    assert set(EXPECTED_REASON.values()) == {
        "bad_json", "bad_checksum", "out_of_range", "not_finite", "oversize", "id_mismatch", "future_time",
        "acl_denied",
    }  # fmt: skip


def test_accepting_kinds_cannot_be_played_as_rejects() -> None:
    with pytest.raises(FaultConfigError):
        make(FaultKind.DUPLICATE)


def test_choose_follows_the_probabilities() -> None:
    config = FaultConfig(malformed_json=0.1, duplicate=0.2, oversize=0.05)
    rng = np.random.default_rng(1)
    seen = Counter(choose(rng, config) for _ in range(40_000))
    assert seen[FaultKind.MALFORMED_JSON] / 40_000 == pytest.approx(0.1, abs=0.01)
    assert seen[FaultKind.DUPLICATE] / 40_000 == pytest.approx(0.2, abs=0.01)
    assert seen[FaultKind.OVERSIZE] / 40_000 == pytest.approx(0.05, abs=0.01)
    assert set(seen) == {None, FaultKind.MALFORMED_JSON, FaultKind.DUPLICATE, FaultKind.OVERSIZE}


def test_all_off_by_default() -> None:
    rng = np.random.default_rng(2)
    assert all(choose(rng, FaultConfig()) is None for _ in range(1000))
    assert FaultConfig().enabled() == ()


def test_clock_skew_stays_inside_the_gateway_tolerance() -> None:
    config = FaultConfig(clock_skew=0.5)
    skews = [clock_skew_s(np.random.default_rng(i), config) for i in range(2000)]
    assert 0.4 < sum(1 for s in skews if s) / 2000 < 0.6
    assert all(abs(s) <= config.max_skew_s < 300 for s in skews)


def test_parse_from_the_command_line() -> None:
    assert FaultConfig.parse("none") == FaultConfig()
    parsed = FaultConfig.parse("malformed_json=0.02,duplicate")
    assert parsed.malformed_json == 0.02 and parsed.duplicate == 0.01
    every = FaultConfig.parse("all=0.1")
    assert set(every.enabled()) == set(FaultKind)
    assert sum(getattr(every, k.value) for k in PER_MESSAGE) == pytest.approx(0.1)


@pytest.mark.parametrize("text", ["bogus=0.1", "duplicate=2", "duplicate=x", "all=-1"])
def test_parse_refuses_nonsense(text: str) -> None:
    with pytest.raises(FaultConfigError):
        FaultConfig.parse(text)


def test_per_message_probabilities_cannot_exceed_one() -> None:
    with pytest.raises(FaultConfigError):
        FaultConfig(malformed_json=0.6, duplicate=0.6)


def test_ledger_adds_up_expectations() -> None:
    ledger = Ledger()
    ledger.add(Outgoing("t", b"x"))
    ledger.add(Outgoing("t", b"x", records=7, kind=FaultKind.OFFLINE_BATCH))
    ledger.add(Outgoing("t", b"x", DUPLICATE, 0, FaultKind.DUPLICATE))
    ledger.add(make(FaultKind.OVERSIZE))
    ledger.add(make(FaultKind.FOREIGN_TOPIC))
    assert (ledger.messages, ledger.stored_records, ledger.duplicates, ledger.acl_denied) == (5, 8, 1, 1)
    assert ledger.rejects == {"oversize": 1}
    assert ledger.faults == {"offline_batch": 1, "duplicate": 1, "oversize": 1, "foreign_topic": 1}
    assert STORED == "stored"
