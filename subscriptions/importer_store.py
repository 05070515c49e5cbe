"""Writing a validated import: devices with their broker accounts, then customers, subscriptions and
assignments in one transaction, each table in one statement over unnest(...) arrays.

Idempotent: customers and subscriptions have ids derived from the file's references
(`ImportRow.customer_id`), rows that exist and did not change are left as they are (no `updated_at`
touched, no `version` bumped), a device is registered only if it is not yet, and an assignment is
written only where the device is not already on that subscription. Importing a file twice changes
nothing the second time.

Order: new devices are registered first (their rows, broker accounts and the gateway's admitted set
go through provisioning.registry.DeviceRegistry's bulk path), the subscription data after; if that
transaction fails, the devices stay registered and a second run of the same file finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from provisioning.credentials import DeviceCredentials
from provisioning.registry import DeviceRegistry, DeviceSpec
from subscriptions.importer import ImportRow, RowError, UnsafeFile, parse, validate
from subscriptions.store import notify

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    valid: int = 0
    errors: list[RowError] = field(default_factory=list)
    imported: bool = False
    outcome: str = ""  # one sentence: what happened
    devices_registered: int = 0
    customers_written: int = 0
    subscriptions_written: int = 0
    assignments_written: int = 0
    credentials: list[DeviceCredentials] = field(default_factory=list)


def plan_periods(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT id, period_months FROM plans").fetchall())


def run_import(
    name: str, data: bytes, database_url: str, registry: DeviceRegistry, now: datetime, *, partial: bool = False,
    progress: Progress | None = None, chunk: int = 1000,
) -> ImportReport:  # fmt: skip
    """Parse, validate and (all valid rows or none, unless `partial`) write one file."""
    report = ImportReport()
    try:
        parsed = parse(name, data)
    except UnsafeFile as exc:
        report.errors.append(RowError(0, "file", str(exc)))
        report.outcome = "refused: nothing imported"
        return report
    with psycopg.connect(database_url) as conn:
        good, errors = validate(parsed, plan_periods(conn))
    report.rows, report.valid, report.errors = len(parsed), len(good), errors
    if errors and not partial:
        report.outcome = f"{len(errors)} errors in {len({e.row for e in errors})} rows: nothing imported (all or none)"
        return report
    if not good:
        report.outcome = "no valid rows: nothing imported"
        return report
    report.credentials = register_new(database_url, registry, good, progress, chunk)
    report.devices_registered = len(report.credentials)
    with psycopg.connect(database_url) as conn, conn.transaction():
        report.customers_written = write_customers(conn, good, now)
        report.subscriptions_written = write_subscriptions(conn, good, now)
        report.assignments_written = write_assignments(conn, good, now)
        ids = conn.execute(
            "SELECT id FROM subscriptions WHERE external_ref = ANY(%s)", (list({r.subscription_ref for r in good}),)
        ).fetchall()
        notify(conn, [i for (i,) in ids])  # the lockout engine takes the new subscriptions in at once
    if progress is not None:
        progress("subscriptions", len(good), len(good))
    report.imported = True
    skipped = f", {len(parsed) - len(good)} invalid rows skipped (partial)" if errors else ""
    report.outcome = f"imported {len(good)} rows{skipped}"
    return report


def register_new(
    database_url: str, registry: DeviceRegistry, rows: Sequence[ImportRow], progress: Progress | None = None,
    chunk: int = 1000,
) -> list[DeviceCredentials]:  # fmt: skip
    """Register the devices not registered yet (registering again would re-key them); their credentials.

    `chunk` devices per registry call: with the local stack's bulk writer (which restarts the broker
    once per call) the caller passes a chunk as large as the file."""
    ids = [r.device_id for r in rows]
    with psycopg.connect(database_url) as conn:
        known = {r[0] for r in conn.execute("SELECT id FROM devices WHERE id = ANY(%s)", (ids,))}
    new = [DeviceSpec(r.device_id, r.device_name, r.model) for r in rows if r.device_id not in known]
    creds: list[DeviceCredentials] = []
    for start in range(0, len(new), chunk):
        creds += registry.register(new[start : start + chunk])
        if progress is not None:
            progress("devices", len(creds), len(new))
    return creds


def write_customers(conn: psycopg.Connection, rows: Sequence[ImportRow], now: datetime) -> int:
    unique = {r.customer_ref: r for r in rows}.values()
    cur = conn.execute(
        "INSERT INTO customers (id, external_ref, name, email, phone, locale, created_at, updated_at)"
        " SELECT id, ref, name, email, phone, locale, %s, %s"
        " FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        "   AS t(id, ref, name, email, phone, locale)"
        " ON CONFLICT (external_ref) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,"
        "   phone = EXCLUDED.phone, locale = EXCLUDED.locale, updated_at = EXCLUDED.updated_at"
        " WHERE (customers.name, customers.email, customers.phone, customers.locale)"
        "   IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.email, EXCLUDED.phone, EXCLUDED.locale)",
        (now, now, [r.customer_id for r in unique], [r.customer_ref for r in unique],
         [r.customer_name for r in unique], [r.email for r in unique], [r.phone for r in unique],
         [r.locale for r in unique]),
    )  # fmt: skip
    return cur.rowcount


def write_subscriptions(conn: psycopg.Connection, rows: Sequence[ImportRow], now: datetime) -> int:
    """New subscriptions only: one that exists (renewed, paid, canceled since) is not the file's to change.
    Its customer is looked up by reference: an existing customer keeps the id it has."""
    unique = list({r.subscription_ref: r for r in rows}.values())
    cur = conn.execute(
        "INSERT INTO subscriptions (id, external_ref, customer_id, plan_id, status, period_start, period_end,"
        " created_at, updated_at)"
        " SELECT t.id, t.ref, c.id, t.plan, CASE WHEN t.e > %s THEN 'active' ELSE 'expired' END, t.s, t.e, %s, %s"
        " FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])"
        "   AS t(id, ref, cref, plan, s, e) JOIN customers c ON c.external_ref = t.cref"
        " ON CONFLICT (external_ref) DO NOTHING",
        (now, now, now, [r.subscription_id for r in unique], [r.subscription_ref for r in unique],
         [r.customer_ref for r in unique], [r.plan_id for r in unique], [r.start for r in unique],
         [r.end for r in unique]),
    )  # fmt: skip
    return cur.rowcount


def write_assignments(conn: psycopg.Connection, rows: Sequence[ImportRow], now: datetime) -> int:
    """Each device onto its subscription: an open assignment elsewhere is closed first (history kept)."""
    pairs = "(SELECT * FROM unnest(%s::text[], %s::text[]) AS p(device_id, ref))"
    devices, refs = [r.device_id for r in rows], [r.subscription_ref for r in rows]
    conn.execute(
        f"UPDATE subscription_devices d SET released_at = %s FROM {pairs} a JOIN subscriptions s"
        " ON s.external_ref = a.ref WHERE d.device_id = a.device_id AND d.released_at IS NULL"
        " AND d.subscription_id <> s.id",
        (now, devices, refs),
    )
    cur = conn.execute(
        "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at)"
        f" SELECT s.id, a.device_id, %s FROM {pairs} a JOIN subscriptions s ON s.external_ref = a.ref"
        " WHERE NOT EXISTS (SELECT 1 FROM subscription_devices d WHERE d.device_id = a.device_id"
        "                   AND d.released_at IS NULL)",
        (now, devices, refs),
    )
    return cur.rowcount
