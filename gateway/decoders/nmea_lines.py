"""One NMEA 0183 line to one `Observation`: checksum, sentence type, and the fields a tracker needs.

pynmea2 names the fields, but its conversions are too forgiving for untrusted input (an empty GGA
latitude reads as 0.0, a bad number is returned as the raw string, `float` accepts "nan" and
"1_0"), so every value is parsed here from the raw field text with strict patterns. An empty field
is `None`, never zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import reduce
from operator import xor
from typing import Literal

import pynmea2

from kernel.records import DecodeError

Verdict = Literal["valid", "no_fix", "simulated"]

KNOT_KMH = 1.852
MAX_LINE = 160
"""NMEA 0183 allows 82 characters; modern receivers exceed that a little with extra fields."""

# printable ASCII only, `$` and `*` excluded from the body (0x24, 0x2A)
_LINE = re.compile(
    rb"\$(?P<body>(?P<talker>[A-Z]{2})(?P<kind>[A-Z]{3})[\x20-\x23\x25-\x29\x2b-\x7e]*)"
    rb"(?:\*(?P<cs>[0-9A-Fa-f]{2}))?"
)
_ENCAPSULATED = re.compile(rb"![A-Z]{5},")  # AIS and other `!` sentences: never a position of ours
_TIME = re.compile(r"(\d{2})(\d{2})(\d{2})(?:\.(\d{1,9}))?")
_COORD = re.compile(r"(\d{1,3})(\d{2}(?:\.\d+)?)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DIGITS = re.compile(r"\d{1,4}")

USED = frozenset({"RMC", "GGA", "GLL", "VTG", "ZDA", "GSA"})


@dataclass(frozen=True, slots=True)
class Observation:
    """What one sentence says about its epoch. `verdict` is None for sentences that carry no
    opinion on fix validity (ZDA, GSA, a VTG without mode)."""

    kind: str
    raw: bytes
    tod_us: int | None = None
    verdict: Verdict | None = None
    why: str = ""
    lat: float | None = None
    lon: float | None = None
    day: date | None = None
    speed_kmh: float | None = None
    heading_deg: float | None = None
    altitude_m: float | None = None
    satellites: int | None = None
    hdop: float | None = None
    mode: int | None = None


def read_line(line: bytes) -> Observation | None:
    """Parse one line; None for a valid sentence we do not use (GSV, GST, proprietary `$P...`,
    encapsulated `!AIVDM...`).

    Proprietary sentences are skipped unverified: several chipsets emit them without a checksum
    (MTK's `$POLYN`) and they never carry a position we use. Bytes before the sentence (a doubled
    `$$GNRMC` from some receivers, the noise of a serial line waking up) are dropped: a sentence's
    body never holds a `$`, so the last `$` is the only one that can start a valid sentence.
    """
    if line[:1] != b"$" or line[:2] == b"$$":
        start = line.rfind(b"$")
        if start > 0:
            line = line[start:]
        elif start < 0 and _ENCAPSULATED.search(line):
            return None
    if line.startswith(b"$P"):
        return None
    if len(line) > MAX_LINE:
        raise DecodeError("bad_schema", f"line longer than {MAX_LINE} characters")
    m = _LINE.fullmatch(line)
    if m is None:
        raise DecodeError("bad_schema", "not an NMEA sentence (or not printable ASCII)")
    if m["cs"] is None:
        raise DecodeError("bad_checksum", "checksum missing")
    computed = reduce(xor, m["body"], 0)
    if computed != int(m["cs"], 16):
        raise DecodeError("bad_checksum", f"checksum {m['cs'].decode()} != computed {computed:02X}")
    kind = m["kind"].decode()
    if kind not in USED:
        return None
    try:
        sentence = pynmea2.parse(line.decode("ascii"), check=True)
    except pynmea2.ParseError as exc:
        raise DecodeError("bad_schema", f"{kind}: {exc.args[0][0] if exc.args else exc}") from None
    return _READERS[kind](sentence, line)


def _field(sentence: pynmea2.NMEASentence, name: str) -> str:
    idx = type(sentence).name_to_idx[name]
    return sentence.data[idx].strip() if idx < len(sentence.data) else ""


def _number(text: str, what: str) -> float | None:
    if not text:
        return None
    if _NUMBER.fullmatch(text) is None:
        raise DecodeError("bad_schema", f"{what} is not a number: {text[:20]!r}")
    return float(text)


def _count(text: str, what: str) -> int | None:
    if not text:
        return None
    if _DIGITS.fullmatch(text) is None:
        raise DecodeError("bad_schema", f"{what} is not a small integer: {text[:20]!r}")
    return int(text)


def _tod(text: str) -> int | None:
    """hhmmss[.fff] to microseconds of the UTC day."""
    if not text:
        return None
    m = _TIME.fullmatch(text)
    if m is None:
        raise DecodeError("bad_schema", f"bad UTC time {text[:20]!r}")
    hh, mm, ss = int(m[1]), int(m[2]), int(m[3])
    if hh > 23 or mm > 59 or ss > 59:
        raise DecodeError("bad_schema", f"bad UTC time {text!r}")
    micro = int((m[4] or "0").ljust(6, "0")[:6])
    return ((hh * 60 + mm) * 60 + ss) * 1_000_000 + micro


def _coord(value: str, hemi: str, positive: str, negative: str) -> float | None:
    """(d)ddmm.mmmm + hemisphere to signed degrees. Minutes of exactly 60 are let through (the
    MTK power-up placeholder 8960.0000 N is 90°N) so the placeholder rule can name them."""
    if not value and not hemi:
        return None
    m = _COORD.fullmatch(value)
    if m is None or hemi not in (positive, negative):
        raise DecodeError("bad_schema", f"bad coordinate {value[:20]!r} {hemi[:2]!r}")
    minutes = float(m[2])
    if minutes > 60.0:
        raise DecodeError("bad_schema", f"minutes {minutes} > 60 in {value!r}")
    degrees = int(m[1]) + minutes / 60.0
    return -degrees if hemi == negative else degrees


def _latlon(s: pynmea2.NMEASentence) -> tuple[float | None, float | None]:
    lat = _coord(_field(s, "lat"), _field(s, "lat_dir"), "N", "S")
    lon = _coord(_field(s, "lon"), _field(s, "lon_dir"), "E", "W")
    return (lat, lon) if lat is not None and lon is not None else (None, None)


def _mode_verdict(mode: str, default: Verdict | None) -> tuple[Verdict | None, str]:
    """FAA mode letter (NMEA 2.3+): N not valid, S simulator, M manual input; others are fixes."""
    if mode == "S":
        return "simulated", "mode S (simulator)"
    if mode == "M":
        return "simulated", "mode M (manual input)"
    if mode == "N":
        return "no_fix", "mode N (not valid)"
    return default, ""


def _rmc(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    status = _field(s, "status")
    base: Verdict = "valid" if status == "A" else "no_fix"
    verdict, why = _mode_verdict(_field(s, "mode_indicator"), base)
    lat, lon = _latlon(s)
    knots = _number(_field(s, "spd_over_grnd"), "speed")
    return Observation(
        "RMC",
        raw,
        tod_us=_tod(_field(s, "timestamp")),
        verdict=verdict,
        why=why or f"status {status or 'empty'}",
        lat=lat,
        lon=lon,
        day=_rmc_date(_field(s, "datestamp")),
        speed_kmh=None if knots is None else knots * KNOT_KMH,
        heading_deg=_number(_field(s, "true_course"), "course"),
    )


def _rmc_date(text: str) -> date | None:
    """ddmmyy; two-digit years 80..99 are 1980s/90s (GPS epoch placeholders), the rest 20xx."""
    if not text:
        return None
    if len(text) != 6 or not text.isdigit():
        raise DecodeError("bad_schema", f"bad RMC date {text[:20]!r}")
    yy = int(text[4:])
    return _date(1900 + yy if yy >= 80 else 2000 + yy, int(text[2:4]), int(text[:2]))


def _date(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        raise DecodeError("bad_schema", f"impossible date {year}-{month}-{day}") from None


def _gga(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    quality = _count(_field(s, "gps_qual"), "quality")
    if quality is None or quality == 0:
        verdict: Verdict = "no_fix"
    elif quality in (7, 8):
        verdict = "simulated"
    else:
        verdict = "valid"
    lat, lon = _latlon(s)
    return Observation(
        "GGA",
        raw,
        tod_us=_tod(_field(s, "timestamp")),
        verdict=verdict,
        why=f"quality {quality if quality is not None else 'empty'}",
        lat=lat,
        lon=lon,
        altitude_m=_number(_field(s, "altitude"), "altitude"),
        satellites=_count(_field(s, "num_sats"), "satellites"),
        hdop=_number(_field(s, "horizontal_dil"), "hdop"),
    )


def _gll(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    status = _field(s, "status")
    verdict, why = _mode_verdict(_field(s, "faa_mode"), "valid" if status == "A" else "no_fix")
    lat, lon = _latlon(s)
    return Observation("GLL", raw, _tod(_field(s, "timestamp")), verdict, why or f"status {status}", lat, lon)


def _vtg(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    verdict, why = _mode_verdict(_field(s, "faa_mode"), None)
    kmh = _number(_field(s, "spd_over_grnd_kmph"), "speed")
    knots = _number(_field(s, "spd_over_grnd_kts"), "speed")
    if kmh is None and knots is not None:
        kmh = knots * KNOT_KMH
    if verdict == "no_fix":  # a VTG in mode N has no speed worth keeping, but no say over the fix
        return Observation("VTG", raw)
    course = _number(_field(s, "true_track"), "course")
    return Observation("VTG", raw, verdict=verdict, why=why, speed_kmh=kmh, heading_deg=course)


def _zda(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    day, month, year = (_count(_field(s, n), n) for n in ("day", "month", "year"))
    when = None if day is None or month is None or year is None else _date(year, month, day)
    return Observation("ZDA", raw, tod_us=_tod(_field(s, "timestamp")), day=when)


def _gsa(s: pynmea2.NMEASentence, raw: bytes) -> Observation:
    mode = _count(_field(s, "mode_fix_type"), "fix type")
    return Observation("GSA", raw, mode=mode, hdop=_number(_field(s, "hdop"), "hdop"))


_READERS = {"RMC": _rmc, "GGA": _gga, "GLL": _gll, "VTG": _vtg, "ZDA": _zda, "GSA": _gsa}
