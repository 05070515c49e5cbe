"""Reminder and import benchmarks on the real servers.

    .venv/bin/python bench/reminders.py                      # reminders: 5,000 devices of 2,000 customers
    .venv/bin/python bench/reminders.py --import-devices 5000  # also: import 5,000 devices with broker accounts

Servers: a private stack in a temporary folder (started and stopped here), and an SMTP server
(aiosmtpd's Sink handler, which accepts and discards) in its own process.

Reminders: `--customers` customers, each with one subscription ending in 5 days and `--devices`
devices spread over them, an email address and a phone number each. Measured: the scheduler's run
(read the state, schedule, render every email and SMS, queue outbox rows and reminder items in one
transaction), then delivery of every outbox row by one notify service (SMTP over one connection,
SMS to the logging gateway), until every row is `sent`. Target: all of it within 30 s.

Import (`--import-devices N`): a CSV of N devices (serials, 3 per customer) imported the way
`fleet import` does it: validation, registration of the devices with their broker accounts (the
local stack's bulk writer), customers, subscriptions and assignments. Target: 5,000 within 10 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import psycopg  # noqa: E402
from benchkit import start_stack  # noqa: E402

from subscriptions.sender import NotifyService  # noqa: E402
from subscriptions.settings import NotifySettings  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(database_url: str, customers: int, devices: int) -> None:
    now = datetime.now(UTC)
    end = now + timedelta(days=5, hours=1)
    cids = [uuid.uuid4() for _ in range(customers)]
    sids = [uuid.uuid4() for _ in range(customers)]
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO plans (id, name, period_months, price_cents, created_at)"
                     " VALUES ('tracker-1y', 'Tracker 1 year', 12, 4900, now()) ON CONFLICT DO NOTHING")  # fmt: skip
        conn.execute(
            "INSERT INTO customers (id, name, email, phone, locale, created_at, updated_at)"
            " SELECT id, 'Customer ' || n, 'c' || n || '@example.org', '+4915' || lpad(n::text, 8, '0'),"
            "   (ARRAY['en', 'de-DE', 'fr', 'it'])[1 + n %% 4], now(), now()"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(id, n)",
            (cids,),
        )
        conn.execute(
            "INSERT INTO subscriptions (id, customer_id, plan_id, status, period_start, period_end, created_at,"
            " updated_at) SELECT s, c, 'tracker-1y', 'active', %s, %s, now(), now()"
            " FROM unnest(%s::uuid[], %s::uuid[]) AS t(s, c)",
            (end - timedelta(days=365), end, sids, cids),
        )
        conn.execute(
            "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at)"
            " SELECT (%s::uuid[])[1 + n %% %s], 'trk-' || n, now() FROM generate_series(0, %s - 1) AS n",
            (sids, customers, devices),
        )


def bench_reminders(urls, customers: int, devices: int, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    seed(urls.database_url, customers, devices)
    port = free_port()
    with (workdir / "smtp.log").open("ab") as out:
        sink = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c",
                                 "aiosmtpd.handlers.Sink"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        time.sleep(1.0)
        settings = NotifySettings(smtp_host="127.0.0.1", smtp_port=port, send_time="00:00", batch=500)
        service = NotifyService(urls.services["notify"].database_url, settings)
        t0 = time.perf_counter()
        queued = service.run_scheduler(datetime.now(UTC))
        t1 = time.perf_counter()
        while service.deliver_due(threading.Event()):
            pass
        t2 = time.perf_counter()
        service.close()
    finally:
        sink.terminate()
        sink.wait(10)
    with psycopg.connect(urls.database_url) as conn:
        states = dict(conn.execute("SELECT state || '/' || channel, count(*) FROM outbox GROUP BY 1").fetchall())
        items = conn.execute("SELECT count(*) FROM reminder_items").fetchone()[0]  # type: ignore[index]
    print(f"reminders: {devices} devices of {customers} customers -> {queued} messages queued ({items} items)")
    print(
        f"  schedule + render + queue {t1 - t0:.2f} s; deliver {t2 - t1:.2f} s "
        f"({s.sent / (t2 - t1):.0f} msg/s); total {t2 - t0:.2f} s (target <= 30 s)"
        if (s := service.stats)
        else ""
    )
    print(f"  outbox: {states}; failed {service.stats.failed}")


def bench_import(urls, stack, n: int, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    from provisioning.broker_admin import BrokerAdmin
    from provisioning.registry import DeviceRegistry
    from subscriptions.importer_store import run_import

    with psycopg.connect(urls.database_url) as conn:
        conn.execute("INSERT INTO plans (id, name, period_months, price_cents, created_at)"
                     " VALUES ('tracker-2y', 'Tracker 2 years', 24, 8900, now()) ON CONFLICT DO NOTHING")  # fmt: skip
    lines = ["serial,customer_ref,customer_name,email,plan,start"]
    lines += [f"IMP-{i:06d},K{i // 3},Customer {i // 3},k{i // 3}@example.org,tracker-2y,2027-01-01" for i in range(n)]
    data = ("\n".join(lines) + "\n").encode()
    api = urls.services["api"]
    registry = DeviceRegistry(api.database_url, api.redis_url, BrokerAdmin(urls.mqtt_admin_url),
                              broker_bulk=stack.register_devices)  # fmt: skip
    try:
        t0 = time.perf_counter()
        report = run_import("bench.csv", data, api.database_url, registry, datetime.now(UTC), chunk=n)
        t1 = time.perf_counter()
        again = run_import("bench.csv", data, api.database_url, registry, datetime.now(UTC), chunk=n)
        t2 = time.perf_counter()
    finally:
        registry.close()
    print(
        f"import: {n} devices: {report.outcome}; registered {report.devices_registered}, subscriptions "
        f"{report.subscriptions_written}, assignments {report.assignments_written} in {t1 - t0:.2f} s "
        "(target <= 10 s)"
    )
    written = again.devices_registered + again.customers_written + again.subscriptions_written
    written += again.assignments_written
    print(f"  the same file again: {again.outcome}; written {written} rows in {t2 - t1:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--import-devices", type=int, default=0, help="also measure an import of this many devices")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-reminders-"))
    load = os.getloadavg()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} on {os.cpu_count()} cores, load {load[0]:.2f}")
    stack, urls = start_stack(workdir)
    try:
        bench_reminders(urls, args.customers, args.devices, workdir)
        if args.import_devices:
            bench_import(urls, stack, args.import_devices, workdir)
    finally:
        stack.down()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
