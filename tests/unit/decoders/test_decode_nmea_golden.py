"""Golden tests: real receiver captures from gpsd's regression suite, with gpsd's own fixes as the
oracle (see tests/data/nmea-gpsd/README.md).

Each capture is decoded twice: cut into one message per epoch, as a tracker publishes, and as one
message holding the whole capture. Per epoch, our fix must match gpsd's final report for that epoch
within 1e-6 degrees, and we must store nothing in an epoch where gpsd has no real fix. Where a sane
tracker policy refuses what gpsd reports, the epoch is listed in DISAGREEMENTS with the reason.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from invariants import check_decoded

from gateway.decoders import Decoded, decode
from kernel.records import RawMessage, Source, Telemetry

DATA = Path(__file__).resolve().parents[2] / "data" / "nmea-gpsd"
NOW = datetime(2026, 1, 1, tzinfo=UTC)  # after every capture, so no fix is "in the future"
TOPIC = "fleet/gpsd-capture/nmea"
DEGREES = 1e-6

CAPTURES = [
    "ublox-neo-m9n-nmea",
    "quectel-L70",
    "bu353-glonass",
    "mtk-3301",
    "firefly-II",
    "GPSmap-76S",
    "nmea-fuzzy-cases",
]

# Time of day (hhmmss.ss) of epochs where gpsd reports a position and we refuse it, and why.
DISAGREEMENTS: dict[str, dict[str, str]] = {
    "mtk-3301": {
        # gpsd turns GGA quality 0 with 3 satellites into a 2D fix; the RMC of the same epoch says
        # V (invalid) and mode N. The receiver itself says it has no fix: not a position.
        "081434.590": "no_fix",
    },
}

# Every reject we expect per capture, by reason: line rejects and whole-epoch rejects.
EXPECTED_REJECTS: dict[str, dict[str, int]] = {
    "ublox-neo-m9n-nmea": {},
    "quectel-L70": {},
    # the receiver loses its fix for the last ten epochs: empty GGA (quality 0, no coordinates,
    # which pynmea2 would read as latitude 0.0) and RMC V; gpsd reports mode 1 for them
    "bu353-glonass": {"no_fix": 10},
    # six power-up epochs at 89°60'N (GGA quality 0, RMC V) and the one in DISAGREEMENTS
    "mtk-3301": {"no_fix": 7},
    # gpsd drops every GGA of this firmware for its wrong checksum; the RMC of each epoch is good
    "firefly-II": {"bad_checksum": 23},
    # every epoch is RMC mode S + GGA quality 8 (gpsd: status 8 "simulated")
    "GPSmap-76S": {"simulated_fix": 12},
    "nmea-fuzzy-cases": {},
}

# How many fixes we store per capture: gpsd's real fixes minus DISAGREEMENTS (so no test is vacuous).
EXPECTED_FIXES = {
    "ublox-neo-m9n-nmea": 61,
    "quectel-L70": 16,
    "bu353-glonass": 9,
    "mtk-3301": 4,
    "firefly-II": 23,
    "GPSmap-76S": 0,
    "nmea-fuzzy-cases": 14,
}

_TIMED_FIELD = {"RMC": 1, "GGA": 1, "ZDA": 1, "GLL": 5}


def _tod(text: str) -> int:
    """hhmmss[.ss] to milliseconds of the day, written independently of the decoder."""
    whole, _, frac = text.partition(".")
    ms = int((frac + "000")[:3])
    return ((int(whole[0:2]) * 60 + int(whole[2:4])) * 60 + int(whole[4:6])) * 1000 + ms


def _sentence_tod(line: str) -> int | None:
    fields = line.split("*")[0].split(",")
    index = _TIMED_FIELD.get(fields[0][3:6])
    if index is None or len(fields) <= index or not fields[index]:
        return None
    return _tod(fields[index])


def log_lines(name: str) -> list[bytes]:
    raw = (DATA / f"{name}.log").read_bytes()
    return [line.strip() for line in raw.split(b"\n") if line.strip() and not line.startswith(b"#")]


def epoch_chunks(lines: list[bytes]) -> list[bytes]:
    """Cut the stream where the time of day changes, like a tracker publishing each epoch."""
    chunks: list[list[bytes]] = []
    current: int | None = None
    for line in lines:
        tod = _sentence_tod(line.decode("ascii", "replace"))
        if not chunks or (tod is not None and current is not None and tod != current):
            chunks.append([])
        if tod is not None:
            current = tod
        chunks[-1].append(line)
    return [b"\r\n".join(chunk) for chunk in chunks]


@dataclass(frozen=True)
class GpsdFix:
    tod_ms: int
    time: datetime | None
    lat: float
    lon: float
    alt: float | None
    speed_mps: float | None
    real: bool  # mode 2/3 and not simulated


def gpsd_epochs(name: str) -> dict[int, GpsdFix]:
    """gpsd's last report per epoch (its final merged state for that instant)."""
    epochs: dict[int, GpsdFix] = {}
    key: int | None = None
    with (DATA / f"{name}.expected.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            when = datetime.fromisoformat(row["time_utc"]) if row["time_utc"] else None
            if when is not None:
                key = ((when.hour * 60 + when.minute) * 60 + when.second) * 1000 + when.microsecond // 1000
            else:
                key = _sentence_tod(row["trigger_sentence"]) or key
            assert key is not None, row
            epochs[key] = GpsdFix(
                tod_ms=key,
                time=when,
                lat=float(row["lat"]),
                lon=float(row["lon"]),
                alt=float(row["alt_msl_m"]) if row["alt_msl_m"] else None,
                speed_mps=float(row["speed_mps"]) if row["speed_mps"] else None,
                real=row["gpsd_mode"] in ("2", "3") and row["gpsd_status"] != "8",
            )
    return epochs


def _decode(payload: bytes) -> Decoded:
    msg = RawMessage(TOPIC, payload, NOW)
    return check_decoded(decode(msg, now=NOW, max_payload=1 << 20), NOW)


def decode_per_epoch(name: str) -> tuple[list[Telemetry], Counter[str]]:
    records: list[Telemetry] = []
    reasons: Counter[str] = Counter()
    for chunk in epoch_chunks(log_lines(name)):
        decoded = _decode(chunk)
        assert len(chunk) <= 16384
        records.extend(decoded.records)
        reasons.update(r.reason for r in decoded.rejects)
    return records, reasons


def decode_whole(name: str) -> tuple[list[Telemetry], Counter[str]]:
    decoded = _decode(b"\n".join(log_lines(name)))
    return list(decoded.records), Counter(r.reason for r in decoded.rejects)


def _record_tod(record: Telemetry) -> int:
    t = record.time
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


def _compare(name: str, records: list[Telemetry]) -> None:
    oracle = gpsd_epochs(name)
    ours = {_record_tod(r): r for r in records}
    assert len(ours) == len(records), "one fix per epoch"
    assert len(records) == EXPECTED_FIXES[name]
    refused = {_tod(t) for t in DISAGREEMENTS.get(name, {})}
    for tod, fix in ours.items():
        gpsd = oracle.get(tod)
        assert gpsd is not None and gpsd.real, f"{name}: stored a fix at {tod} ms where gpsd has none"
        assert abs(fix.lat - gpsd.lat) <= DEGREES and abs(fix.lon - gpsd.lon) <= DEGREES, (fix, gpsd)
        assert fix.source is Source.NMEA and fix.device_id == "gpsd-capture"
        if gpsd.time is not None:
            assert fix.time == gpsd.time, (fix.time, gpsd.time)
        if gpsd.alt is not None and fix.altitude_m is not None:
            assert fix.altitude_m == pytest.approx(gpsd.alt, abs=1e-3)
    for tod, gpsd in oracle.items():
        if gpsd.real and tod not in refused:
            assert tod in ours, f"{name}: gpsd has a fix at {tod} ms that we did not store"
        if tod in refused:
            assert tod not in ours


@pytest.mark.parametrize("name", CAPTURES)
def test_per_epoch_messages_match_gpsd(name: str) -> None:
    records, reasons = decode_per_epoch(name)
    _compare(name, records)
    assert dict(reasons) == EXPECTED_REJECTS[name]


@pytest.mark.parametrize("name", CAPTURES)
def test_whole_capture_in_one_message_matches_gpsd(name: str) -> None:
    records, reasons = decode_whole(name)
    _compare(name, records)
    assert dict(reasons) == EXPECTED_REJECTS[name]


@pytest.mark.parametrize("name", CAPTURES)
def test_chunking_does_not_change_the_fixes(name: str) -> None:
    per_epoch, _ = decode_per_epoch(name)
    whole, _ = decode_whole(name)
    assert [(r.time, r.lat, r.lon) for r in per_epoch] == [(r.time, r.lat, r.lon) for r in whole]


@pytest.mark.parametrize("name", CAPTURES)
def test_sentences_gpsd_rejected_are_rejected(name: str) -> None:
    """A position sentence absent from gpsd's echo was refused by gpsd; it must be refused here
    line by line (not merely outvoted), so its bytes reach the dead-letter table."""
    echoed = {line.strip() for line in (DATA / f"{name}.log.chk").read_bytes().split(b"\n")}
    refused = [ln for ln in log_lines(name) if ln not in echoed and ln[3:6] in (b"RMC", b"GGA", b"GLL")]
    decoded = _decode(b"\n".join(log_lines(name)))
    rejected_lines = {r.raw for r in decoded.rejects}
    assert all(line in rejected_lines for line in refused), refused


def test_speeds_agree_with_gpsd_where_the_receiver_reports_speed() -> None:
    """gpsd reports m/s rounded to mm/s; we store km/h from RMC/VTG knots."""
    compared = 0
    for name in CAPTURES:
        oracle = gpsd_epochs(name)
        for record in decode_whole(name)[0]:
            gpsd = oracle[_record_tod(record)]
            if record.speed_kmh is not None and gpsd.speed_mps is not None:
                assert record.speed_kmh / 3.6 == pytest.approx(gpsd.speed_mps, abs=6e-4), (name, record)
                compared += 1
    assert compared > 100


@pytest.mark.parametrize("junk", [b"$", b"\x00\xff", b"\r\x00$GP"])
@pytest.mark.parametrize("name", CAPTURES)
def test_bytes_before_each_sentence_change_nothing(name: str, junk: bytes) -> None:
    """Receivers that double the `$` (`$$GNRMC`) or wake a serial line with noise: the same fixes and
    the same rejects as the clean capture."""
    clean = [_decode(chunk) for chunk in epoch_chunks(log_lines(name))]
    noisy = [_decode(b"\r\n".join(junk + line for line in chunk.split(b"\r\n")))
             for chunk in epoch_chunks(log_lines(name))]  # fmt: skip
    assert [d.records for d in noisy] == [d.records for d in clean]
    assert [[r.reason for r in d.rejects] for d in noisy] == [[r.reason for r in d.rejects] for d in clean]
