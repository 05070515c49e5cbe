"""NMEA rules on hand-made sentences (checksums computed here), beyond what the captures cover."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invariants import check_decoded

from gateway.decoders import Decoded, decode
from kernel.records import DecodeError, RawMessage

NOW = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
TOPIC = "fleet/tracker-7/nmea"


def nmea(body: str) -> str:
    """Wrap a sentence body (without `$` and `*hh`) with its correct checksum."""
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def run(*lines: str, now: datetime = NOW, sep: str = "\r\n") -> Decoded:
    payload = sep.join(lines).encode()
    return check_decoded(decode(RawMessage(TOPIC, payload, now), now=now), now)


RMC = nmea("GPRMC,120000.00,A,4807.0380,N,01131.0000,E,10.0,84.4,010625,,,A")
GGA = nmea("GPGGA,120000.00,4807.0380,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,")
VTG = nmea("GPVTG,84.4,T,,M,10.0,N,18.5,K,A")


def test_one_epoch_combines_rmc_gga_vtg() -> None:
    (fix,) = run(RMC, GGA, VTG).records
    assert fix.time == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert fix.lat == pytest.approx(48 + 7.038 / 60) and fix.lon == pytest.approx(11 + 31 / 60)
    assert fix.speed_kmh == pytest.approx(18.52)  # RMC knots win over VTG's rounded km/h
    assert fix.heading_deg == 84.4 and fix.altitude_m == 545.4
    assert (fix.satellites, fix.hdop, fix.fix) == (8, 0.9, 3)


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD"])
def test_any_talker(talker: str) -> None:
    (fix,) = run(nmea(f"{talker}RMC,120000.00,A,4807.0380,S,01131.0000,W,0.0,,010625,,,A")).records
    assert fix.lat < 0 and fix.lon < 0 and fix.heading_deg is None


def test_empty_gga_is_never_a_point_at_zero_zero() -> None:
    decoded = run(nmea("GPGGA,120000.00,,,,,0,00,99.99,,,,,,"))
    assert decoded.records == () and [r.reason for r in decoded.rejects] == ["no_fix"]


def test_gga_with_quality_but_empty_coordinates_is_no_fix() -> None:
    decoded = run(nmea("GPGGA,120000.00,,,,,1,04,1.0,,,,,,"))
    assert decoded.records == () and decoded.rejects[0].reason == "no_fix"


def test_zero_zero_marked_valid_is_a_placeholder() -> None:
    decoded = run(nmea("GPRMC,120000.00,A,0000.0000,N,00000.0000,E,0.0,0.0,010625,,,A"))
    assert decoded.records == () and decoded.rejects[0].reason == "placeholder_fix"


def test_mtk_power_up_pole_marked_valid_is_a_placeholder() -> None:
    decoded = run(nmea("GPGGA,120000.000,8960.000000,N,00000.000000,E,1,3,,137.000,M,13.000,M,,"))
    assert decoded.rejects[0].reason == "placeholder_fix"


@pytest.mark.parametrize(
    "sentence",
    [
        nmea("GPGGA,120000.00,4807.0380,N,01131.0000,E,8,08,0.9,545.4,M,46.9,M,,"),
        nmea("GPGGA,120000.00,4807.0380,N,01131.0000,E,7,08,0.9,545.4,M,46.9,M,,"),
        nmea("GPRMC,120000.00,A,4807.0380,N,01131.0000,E,0.0,0.0,010625,,,S"),
        nmea("GPGLL,4807.0380,N,01131.0000,E,120000.00,A,S"),
    ],
)
def test_simulator_and_manual_fixes_are_not_positions(sentence: str) -> None:
    decoded = run(sentence)
    assert decoded.records == () and decoded.rejects[0].reason == "simulated_fix"


def test_simulated_sentence_taints_the_whole_epoch() -> None:
    sim = nmea("GPGGA,120000.00,4807.0380,N,01131.0000,E,8,08,0.9,545.4,M,46.9,M,,")
    decoded = run(RMC, sim)
    assert decoded.records == () and decoded.rejects[0].raw == f"{RMC}\n{sim}".encode()


def test_bad_checksum_line_is_rejected_alone() -> None:
    broken = GGA[:-2] + ("00" if GGA[-2:] != "00" else "01")
    decoded = run(RMC, broken)
    assert len(decoded.records) == 1 and decoded.records[0].altitude_m is None
    assert [(r.reason, r.raw) for r in decoded.rejects] == [("bad_checksum", broken.encode())]


def test_missing_checksum_and_lowercase_hex() -> None:
    decoded = run(RMC.split("*")[0])
    assert decoded.rejects[0].reason == "bad_checksum" and decoded.records == ()
    assert len(run(RMC[:-2] + RMC[-2:].lower()).records) == 1


def test_good_epochs_survive_junk_lines() -> None:
    rmc2 = nmea("GPRMC,120001.00,A,4807.0390,N,01131.0000,E,10.0,84.4,010625,,,A")
    decoded = run("AT+CGNSINF", RMC, "$GPRMC,garbage", rmc2, "\x00\xff")
    assert [r.time.second for r in decoded.records] == [0, 1]
    assert sorted(r.reason for r in decoded.rejects) == ["bad_checksum", "bad_schema", "bad_schema"]


def test_malformed_field_with_valid_checksum() -> None:
    decoded = run(nmea("GPRMC,120000.00,A,48O7.0380,N,01131.0000,E,10.0,84.4,010625,,,A"))
    assert decoded.rejects[0].reason == "bad_schema"
    decoded = run(nmea("GPRMC,120000.00,A,4807.0380,N,01131.0000,E,nan,84.4,010625,,,A"))
    assert decoded.rejects[0].reason == "bad_schema"


def test_proprietary_and_unused_sentences_are_skipped_quietly() -> None:
    decoded = run("$POLYN,TIME,RESTART_OCCURRED", nmea("GPGSV,1,1,01,08,63,065,50"), RMC)
    assert len(decoded.records) == 1 and decoded.rejects == ()


def test_gga_alone_takes_the_server_date() -> None:
    (fix,) = run(GGA).records
    assert fix.time == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_gga_alone_just_before_midnight_takes_the_previous_day() -> None:
    gga = nmea("GPGGA,235959.00,4807.0380,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,")
    (fix,) = run(gga, now=datetime(2025, 6, 2, 0, 0, 2, tzinfo=UTC)).records
    assert fix.time == datetime(2025, 6, 1, 23, 59, 59, tzinfo=UTC)


def test_gga_borrows_the_date_of_a_neighbouring_epoch_across_midnight() -> None:
    rmc = nmea("GPRMC,235959.00,A,4807.0380,N,01131.0000,E,1.0,84.4,311224,,,A")
    gga = nmea("GPGGA,000000.00,4807.0390,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,")
    fixes = run(rmc, gga).records
    assert [f.time.date() for f in fixes] == [date(2024, 12, 31), date(2025, 1, 1)]


def test_future_and_pre_2000_dates() -> None:
    future = nmea("GPRMC,120600.00,A,4807.0380,N,01131.0000,E,1.0,84.4,010625,,,A")
    assert run(future).rejects[0].reason == "future_time"  # 5.5 min ahead of NOW
    old = nmea("GPRMC,120000.00,A,4807.0380,N,01131.0000,E,1.0,84.4,050180,,,A")
    assert run(old).rejects[0].reason == "bad_time"


def test_untimed_sentences_join_the_epoch_before_them() -> None:
    rmc2 = nmea("GPRMC,120001.00,A,4807.0390,N,01131.0000,E,,,010625,,,A")
    vtg2 = nmea("GPVTG,90.0,T,,M,,N,36.0,K,A")
    fixes = run(RMC, rmc2, vtg2).records
    assert [(f.speed_kmh, f.heading_deg) for f in fixes] == [(pytest.approx(18.52), 84.4), (36.0, 90.0)]


def test_gsa_gives_dimension_and_fallback_hdop() -> None:
    gsa = nmea("GNGSA,A,2,03,19,27,,,,,,,,,,2.75,2.56,1.00")
    (fix,) = run(RMC, gsa).records
    assert fix.fix == 2 and fix.hdop == 2.56


def test_speed_out_of_range_rejects_the_epoch() -> None:
    rmc = nmea("GPRMC,120000.00,A,4807.0380,N,01131.0000,E,500.0,84.4,010625,,,A")
    assert run(rmc).rejects[0].reason == "out_of_range"


def test_lf_and_crlf_and_blank_lines() -> None:
    assert len(run(RMC, "", GGA, sep="\n").records) == 1
    assert len(run(RMC, GGA, sep="\r\n").records) == 1


def test_whitespace_only_payload_is_empty() -> None:
    with pytest.raises(DecodeError) as info:
        decode(RawMessage(TOPIC, b" \r\n\r\n", NOW), now=NOW)
    assert info.value.reason == "empty"


def _nmea_coord(value: float, width: int, pos: str, neg: str) -> tuple[str, str]:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees:0{width}d}{minutes:07.4f}", pos if value >= 0 else neg


@settings(max_examples=300, deadline=None)
@given(
    lat=st.floats(min_value=-89.9, max_value=89.9),
    lon=st.floats(min_value=-179.9, max_value=179.9),
    knots=st.floats(min_value=0, max_value=200),
    course=st.floats(min_value=0, max_value=359.9),
    seconds=st.integers(min_value=0, max_value=86399),
)
def test_round_trip_of_any_position(lat: float, lon: float, knots: float, course: float, seconds: int) -> None:
    """Sentences written by an independent encoder decode back to the same place (NMEA keeps
    1e-4 minutes, about 2e-6 degrees), at the right time, never at (0, 0)."""
    la, ns = _nmea_coord(lat, 2, "N", "S")
    lo, ew = _nmea_coord(lon, 3, "E", "W")
    hhmmss = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.00"
    rmc = nmea(f"GNRMC,{hhmmss},A,{la},{ns},{lo},{ew},{knots:.3f},{course:.2f},010625,,,A")
    gga = nmea(f"GNGGA,{hhmmss},{la},{ns},{lo},{ew},1,09,1.0,10.0,M,,M,,")
    now = datetime(2025, 6, 2, 0, 0, 0, tzinfo=UTC)
    decoded = run(rmc, gga, now=now)
    if float(la) == 0 and float(lo) == 0:  # rounds to exactly (0, 0)
        assert decoded.rejects[0].reason == "placeholder_fix"
        return
    (fix,) = decoded.records
    assert fix.lat == pytest.approx(lat, abs=2e-6) and fix.lon == pytest.approx(lon, abs=2e-6)
    assert fix.time == datetime(2025, 6, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    assert fix.speed_kmh == pytest.approx(round(knots, 3) * 1.852)
