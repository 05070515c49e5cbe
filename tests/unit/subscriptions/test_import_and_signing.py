"""The import's parsing and validation, and the webhook signature (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscriptions.importer import RowError, UnsafeFile, luhn_ok, parse, validate
from subscriptions.periods import add_months
from subscriptions.signing import SignatureError, sign, verify

PLANS = {"tracker-1y": 12, "tracker-2y": 24}
HEADER = "imei,serial,customer_ref,customer_name,email,phone,locale,plan,start\n"
GOOD_IMEI = "490154203237518"


def test_a_valid_csv_makes_rows_grouped_into_subscriptions() -> None:
    data = (HEADER + f"{GOOD_IMEI},,C1,Ann,ann@example.org,+4915112345678,de-DE,tracker-1y,2027-01-31\n"
            ",TRK-2,C1,Ann,ann@example.org,+4915112345678,de-DE,tracker-1y,2027-01-31\n").encode()  # fmt: skip
    rows, errors = validate(parse("f.csv", data), PLANS)
    assert errors == []
    assert [r.device_id for r in rows] == [GOOD_IMEI, "TRK-2"]
    assert rows[0].subscription_id == rows[1].subscription_id
    assert rows[0].end == datetime(2028, 1, 31, tzinfo=UTC)


def test_every_problem_is_reported_with_row_and_field() -> None:
    data = (HEADER + "123,,C1,Ann,not-mail,,en,tracker-9y,2027-13-01\n"
            f"{GOOD_IMEI},X,,,,,en,tracker-1y,2027-01-01\n"
            f"{GOOD_IMEI},,C2,Bo,bo@example.org,,en,tracker-1y,2027-01-01\n"
            f",{GOOD_IMEI},C3,Cy,cy@example.org,,en,tracker-1y,2027-01-01\n").encode()  # fmt: skip
    _, errors = validate(parse("f.csv", data), PLANS)
    found = {(e.row, e.field) for e in errors}
    assert {(2, "imei"), (2, "email"), (2, "plan"), (2, "start")} <= found
    assert {(3, "imei"), (3, "customer_ref"), (3, "customer_name")} <= found
    assert (5, "serial") in found  # the same device as row 4
    assert (4, "imei") not in found


def test_xml_rows_from_elements_or_attributes() -> None:
    data = (b"<import><row imei='" + GOOD_IMEI.encode() + b"'><customer_ref>C1</customer_ref>"
            b"<customer_name>Ann &amp; Co</customer_name><email>a@example.org</email><plan>tracker-2y</plan>"
            b"<start>2027-02-28T10:00:00Z</start></row></import>")  # fmt: skip
    rows, errors = validate(parse("f.xml", data), PLANS)
    assert errors == [] and rows[0].customer_name == "Ann & Co"


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b"<import><row><customer_ref>&lol2;</customer_ref></row></import>",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<import><row><customer_ref>&xxe;</customer_ref></row></import>",
        b'<?xml version="1.0"?><!DOCTYPE import SYSTEM "http://127.0.0.1:1/x.dtd"><import/>',
    ],
    ids=["billion-laughs", "external-entity", "external-dtd"],
)
def test_unsafe_xml_is_refused_with_a_clear_error(xml: bytes) -> None:
    with pytest.raises(UnsafeFile, match="unsafe XML refused"):
        parse("evil.xml", xml)


def test_other_files_are_refused() -> None:
    with pytest.raises(UnsafeFile):
        parse("f.json", b"{}")
    with pytest.raises(UnsafeFile, match="well-formed"):
        parse("f.xml", b"<import><row>")


def test_luhn_and_months() -> None:
    assert luhn_ok(GOOD_IMEI) and not luhn_ok("490154203237519")
    assert add_months(datetime(2027, 1, 31, tzinfo=UTC), 1) == datetime(2027, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2028, 2, 29, tzinfo=UTC), 12) == datetime(2029, 2, 28, tzinfo=UTC)
    assert RowError(1, "f", "r").row == 1


SECRET = b"whsec-test"


@given(st.binary(max_size=500), st.integers(1_600_000_000, 2_000_000_000))
def test_a_signed_body_verifies_and_any_change_is_refused(body: bytes, t: int) -> None:
    header = sign(SECRET, t, body)
    assert verify(header, body, SECRET, t + 10) == t
    with pytest.raises(SignatureError, match="bad signature"):
        verify(header, body + b"x", SECRET, t)
    with pytest.raises(SignatureError, match="bad signature"):
        verify(header, body, SECRET + b"!", t)


@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "unsigned"), ("", "unsigned"), ("v1=abc", "malformed"), ("t=100", "malformed"), ("t=x,v1=ab", "malformed")],
)
def test_unsigned_and_malformed_are_refused(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(header, b"{}", SECRET, 100)


def test_older_than_five_minutes_is_refused_and_rotation_is_allowed() -> None:
    header = sign(SECRET, 1000, b"{}")
    with pytest.raises(SignatureError, match="window"):
        verify(header, b"{}", SECRET, 1000 + 301)
    rotated = f"t=1000,v1={'0' * 64},{header.split(',')[1]}"
    assert verify(rotated, b"{}", SECRET, 1000) == 1000
