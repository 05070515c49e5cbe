"""Lockout benchmark on the real servers: many subscriptions ending within one minute, the lockout
engine (`fleet lockout`, its own process and accounts) issuing their locks.

    .venv/bin/python bench/lockout.py                       # 5,000 expiries within 60 s
    .venv/bin/python bench/lockout.py --subscriptions 5000 --spread 60 --engines 2

Servers: a private stack in a temporary folder (started and stopped here). Data: `--subscriptions`
devices (registry rows), one customer with email and phone and one monthly subscription per device,
ending at evenly spread times within `--spread` seconds from `--lead` seconds after the engine has
caught up, both notices sent four days before (so the 72-hour notice rule is met and every lock
falls due at its subscription's end). Written by COPY as the database owner, before the engine starts.

Measured from the database: expiry → lock command issued (the command's `created_at` minus the
subscription's end), p50 / p99 / max; missed = devices without a lock command `--settle` seconds
after the last end; duplicates = lock commands beyond the first per device.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import psycopg  # noqa: E402
from benchkit import pct, start_stack  # noqa: E402

from subscriptions.lockout_store import overdue_key  # noqa: E402
from subscriptions.model import Channel  # noqa: E402


def seed(database_url: str, n: int, first_end: datetime, spread_s: float) -> None:
    """Devices, customers, one plan, subscriptions and their sent notices, by COPY."""
    now = datetime.now(UTC)
    sent = first_end - timedelta(days=4)
    subs = [(uuid.uuid4(), uuid.uuid4(), f"bench-{i:05d}", first_end + timedelta(seconds=spread_s * i / n))
            for i in range(n)]  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO plans (id, name, period_months, price_cents, created_at)"
            " VALUES ('bench', 'bench', 1, 100, %s)",
            (now,),
        )
        cur = conn.cursor()
        with cur.copy("COPY devices (id, model) FROM STDIN") as copy:
            for _, _, device, _ in subs:
                copy.write_row((device, "bench"))
        with cur.copy("COPY customers (id, name, email, phone, created_at, updated_at) FROM STDIN") as copy:
            for _, cid, device, _ in subs:
                copy.write_row((cid, device, f"{device}@example.org", "+4915100000000", now, now))
        with cur.copy("COPY subscriptions (id, customer_id, plan_id, status, period_start, period_end, created_at,"
                      " updated_at) FROM STDIN") as copy:  # fmt: skip
            for sid, cid, _, end in subs:
                copy.write_row((sid, cid, "bench", "active", end - timedelta(days=30), end, now, now))
        with cur.copy("COPY subscription_devices (subscription_id, device_id, assigned_at) FROM STDIN") as copy:
            for sid, _, device, _ in subs:
                copy.write_row((sid, device, now))
        with cur.copy("COPY outbox (idempotency_key, kind, channel, customer_id, recipient, body_text, state, next_at,"
                      " created_at, sent_at) FROM STDIN") as copy:  # fmt: skip
            for sid, cid, _, end in subs:
                for channel in Channel:
                    copy.write_row((overdue_key(sid, end, channel), "overdue", str(channel), cid, "x", "notice",
                                    "sent", sent, sent, sent))  # fmt: skip


def measure(database_url: str) -> tuple[list[float], int, int, int]:
    """Latencies (s), missed, duplicates, subscriptions."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.device_id, s.period_end, count(c.id), min(c.created_at) FROM subscription_devices d"
            " JOIN subscriptions s ON s.id = d.subscription_id"
            " LEFT JOIN commands c ON c.device_id = d.device_id AND c.action = 'lock'"
            " GROUP BY d.device_id, s.period_end"
        ).fetchall()
    latencies = sorted((first - end).total_seconds() for _, end, n, first in rows if n)
    missed = sum(1 for r in rows if r[2] == 0)
    duplicates = sum(r[2] - 1 for r in rows if r[2] > 1)
    return latencies, missed, duplicates, len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=5000)
    parser.add_argument("--spread", type=float, default=60.0, help="the ends fall within this many seconds")
    parser.add_argument("--lead", type=float, default=10.0, help="seconds from the engine's start to the first end")
    parser.add_argument("--engines", type=int, default=1, help="lockout engines running at once")
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-lockout-"))
    stack, urls = start_stack(workdir)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        own = urls.services["lockout"]
        env = {**os.environ, "FLEET_DATABASE_URL": own.database_url or "", "FLEET_REDIS_URL": own.redis_url or ""}
        first_end = datetime.now(UTC) + timedelta(seconds=args.lead + 5)
        started = time.perf_counter()
        seed(urls.database_url, args.subscriptions, first_end, args.spread)
        print(f"seeded {args.subscriptions} subscriptions in {time.perf_counter() - started:.1f} s; first end in "
              f"{(first_end - datetime.now(UTC)).total_seconds():.1f} s")  # fmt: skip
        for i in range(args.engines):
            with (workdir / f"lockout-{i}.log").open("ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "fleet.cli", "lockout"], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, cwd=_HERE.parent))  # fmt: skip
        last_end = first_end + timedelta(seconds=args.spread)
        while datetime.now(UTC) < last_end + timedelta(seconds=args.settle):
            time.sleep(0.5)
        latencies, missed, duplicates, total = measure(urls.database_url)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        stack.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    up = Path("/proc/uptime").read_text().split()[0] if Path("/proc/uptime").exists() else "?"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
          f" Python {platform.python_version()}; {datetime.now(UTC).isoformat(timespec='seconds')};"
          f" uptime {float(up) / 3600:.1f} h; load {load}")  # fmt: skip
    print(f"{total} subscriptions ending within {args.spread:g} s, {args.engines} engine(s)")
    worst = max(latencies, default=float("nan"))
    print(f"expiry → lock command issued: p50 {pct(latencies, 0.5) * 1000:.0f} ms,"
          f" p99 {pct(latencies, 0.99) * 1000:.0f} ms, max {worst * 1000:.0f} ms")  # fmt: skip
    print(f"missed {missed}, duplicates {duplicates}")
    if args.keep:
        print(f"kept {workdir}")
    ok = missed == 0 and duplicates == 0 and latencies and pct(latencies, 0.99) <= 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
