"""Bulk import of devices, customers and subscriptions from CSV or XML: parsing and validation (pure).

A row carries one device (`imei` or `serial`), its customer (`customer_ref`, the importer's own id,
with `customer_name`, `email`, `phone`, `locale`), the `plan` id and the `start` (ISO date or time).
Rows of one customer, plan and start share one subscription (or name it: `subscription_ref`). XML is
`<import><row>...</row></import>`, fields as child elements or attributes; it is parsed with
defusedxml, so entity expansion (billion laughs), external entities and DTDs are refused as a whole
file with `UnsafeFile`, before any row is read.

Every row is checked; each problem is a `RowError(row, field, reason)`, rows numbered from 1 as a
spreadsheet shows them (CSV: the header is row 1, so data starts at 2; XML: the n-th <row>).
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from subscriptions.periods import add_months

MAX_ROWS = 100_000
FIELDS = ("imei", "serial", "customer_ref", "customer_name", "email", "phone", "locale", "plan", "start",
          "subscription_ref", "name", "model")  # fmt: skip
NAMESPACE = uuid.UUID("6f1d7c52-5a8e-4d0e-9a55-2d6b3e0f9a10")  # ids derived from the importer's refs

SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the device id pattern of the registry
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
PHONE = re.compile(r"^\+[1-9]\d{6,14}$")  # E.164
LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


class UnsafeFile(ValueError):
    """The whole file is refused: unsafe XML, not CSV or XML, or too many rows."""


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImportRow:
    row: int
    device_id: str
    customer_ref: str
    customer_name: str
    email: str | None
    phone: str | None
    locale: str
    plan_id: str
    start: datetime
    end: datetime
    subscription_ref: str
    device_name: str = ""
    model: str = "generic"

    @property
    def customer_id(self) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, f"customer:{self.customer_ref}")

    @property
    def subscription_id(self) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, f"subscription:{self.subscription_ref}")


def parse(name: str, data: bytes) -> list[tuple[int, dict[str, str]]]:
    """(row number, fields) of every row of a CSV or XML file, by its name's ending."""
    lower = name.lower()
    if lower.endswith(".xml"):
        return parse_xml(data)
    if lower.endswith(".csv"):
        return parse_csv(data)
    raise UnsafeFile(f"{name}: expected a .csv or .xml file")


def parse_csv(data: bytes) -> list[tuple[int, dict[str, str]]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsafeFile(f"not UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for number, record in enumerate(reader, start=2):
        if number > MAX_ROWS + 1:
            raise UnsafeFile(f"more than {MAX_ROWS} rows")
        rows.append((number, {(k or "").strip().lower(): (v or "").strip() for k, v in record.items() if k}))
    return rows


def parse_xml(data: bytes) -> list[tuple[int, dict[str, str]]]:
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise UnsafeFile(f"unsafe XML refused ({type(exc).__name__}): entities, DTDs and external references "
                         "are not allowed") from None  # fmt: skip
    except SafeET.ParseError as exc:
        raise UnsafeFile(f"not well-formed XML: {exc}") from None
    rows = []
    for number, element in enumerate(root.iter("row"), start=1):
        if number > MAX_ROWS:
            raise UnsafeFile(f"more than {MAX_ROWS} rows")
        fields = {k.lower(): v.strip() for k, v in element.attrib.items()}
        fields.update({child.tag.lower(): (child.text or "").strip() for child in element})
        rows.append((number, fields))
    return rows


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _start(text: str) -> datetime | None:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def validate(
    rows: Iterable[tuple[int, Mapping[str, str]]], plans: Mapping[str, int]
) -> tuple[list[ImportRow], list[RowError]]:
    """The valid rows and every problem found. `plans` maps a plan id to its period in months."""
    good: list[ImportRow] = []
    errors: list[RowError] = []
    devices: dict[str, int] = {}
    customers: dict[str, tuple[str, str | None, str | None, str]] = {}
    subscriptions: dict[str, tuple[str, str, datetime]] = {}
    for number, fields in rows:
        row_errors, parsed = _check(number, fields, plans)
        if parsed is not None:
            row_errors.extend(_conflicts(parsed, fields, devices, customers, subscriptions))
        errors.extend(row_errors)
        if parsed is not None and not row_errors:
            devices[parsed.device_id] = number
            good.append(parsed)
    return good, errors


def _conflicts(
    parsed: ImportRow, fields: Mapping[str, str], devices: dict[str, int],
    customers: dict[str, tuple[str, str | None, str | None, str]], subscriptions: dict[str, tuple[str, str, datetime]],
) -> list[RowError]:  # fmt: skip
    """What a valid row contradicts in the rows before it."""
    found = []
    n = parsed.row
    if parsed.device_id in devices:
        where = "imei" if fields.get("imei") else "serial"
        found.append(RowError(n, where, f"device {parsed.device_id} is in row {devices[parsed.device_id]} too"))
    who = (parsed.customer_name, parsed.email, parsed.phone, parsed.locale)
    if customers.setdefault(parsed.customer_ref, who) != who:
        found.append(RowError(n, "customer_ref", f"customer {parsed.customer_ref} has other details in an earlier row"))
    terms = (parsed.customer_ref, parsed.plan_id, parsed.start)
    if subscriptions.setdefault(parsed.subscription_ref, terms) != terms:
        found.append(RowError(n, "subscription_ref", "another customer, plan or start in an earlier row"))
    return found


def _check(number: int, f: Mapping[str, str], plans: Mapping[str, int]) -> tuple[list[RowError], ImportRow | None]:
    errors: list[RowError] = []

    def bad(field: str, reason: str) -> None:
        errors.append(RowError(number, field, reason))

    imei, serial = f.get("imei", ""), f.get("serial", "")
    if imei and serial:
        bad("imei", "give an IMEI or a serial, not both")
    elif imei and not (len(imei) == 15 and imei.isdigit() and luhn_ok(imei)):
        bad("imei", "an IMEI is 15 digits with a valid check digit")
    elif serial and not SERIAL.match(serial):
        bad("serial", "letters, digits, '_', '.', '-', at most 64, starting with a letter or digit")
    elif not imei and not serial:
        bad("imei", "missing: every row needs an IMEI or a serial")
    ref = f.get("customer_ref", "")
    if not ref or len(ref) > 200:
        bad("customer_ref", "missing" if not ref else "longer than 200 characters")
    name = f.get("customer_name", "")
    if not name or len(name) > 200:
        bad("customer_name", "missing" if not name else "longer than 200 characters")
    email, phone, locale = f.get("email", ""), f.get("phone", ""), f.get("locale", "") or "en"
    if email and not EMAIL.match(email):
        bad("email", f"not an email address: {email[:80]!r}")
    if phone and not PHONE.match(phone):
        bad("phone", "not an E.164 number (+ and 7 to 15 digits)")
    if not email and not phone:
        bad("email", "a customer needs an email or a phone number (reminders)")
    if not LOCALE.match(locale):
        bad("locale", f"not a locale tag: {locale[:20]!r}")
    plan = f.get("plan", "")
    if plan not in plans:
        bad("plan", f"unknown plan {plan[:64]!r}" if plan else "missing")
    start = _start(f.get("start", ""))
    if start is None:
        bad("start", "missing or not an ISO date (2027-01-31) or time")
    if errors or start is None:
        return errors, None
    sub_ref = f.get("subscription_ref") or f"{ref}/{plan}/{start.isoformat()}"
    return errors, ImportRow(
        number, imei or serial, ref, name, email or None, phone or None, locale, plan, start,
        add_months(start, plans[plan]), sub_ref, f.get("name", "")[:200], (f.get("model") or "generic")[:64],
    )  # fmt: skip
