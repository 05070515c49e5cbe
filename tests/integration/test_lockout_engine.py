"""The lockout engine on the real database and Redis: on time, once, across restarts and two engines."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fleet_harness import spawn_service, stop_service
from subs_harness import (
    add_devices,
    commands_for,
    lockout_engine,
    subscribe,
    truncate_subscriptions,
    wait_until,
)

from kernel.endpoints import Endpoints
from subscriptions import store
from subscriptions.policy import PolicySettings

pytestmark = pytest.mark.integration


@pytest.fixture
def subs(clean: Endpoints) -> Endpoints:
    truncate_subscriptions(clean)
    return clean


def _now() -> datetime:
    return datetime.now(UTC)


def test_locks_on_expiry_within_a_second_and_unlocks_on_renewal(subs: Endpoints) -> None:
    add_devices(subs, ["bike-1", "bike-2"])
    now = _now()
    end = now + timedelta(seconds=2)
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        sub = subscribe(conn, ["bike-1"], end, now, notice_at=now - timedelta(days=4))
        subscribe(conn, ["bike-2"], now + timedelta(days=30), now, notice_at=None)
    with lockout_engine(subs):
        wait_until(lambda: len(commands_for(subs)) >= 1, 10, "the lock")
        ((device, action, created, reason),) = commands_for(subs)
        assert (device, action, reason) == ("bike-1", "lock", "subscription_expired")
        assert timedelta(0) <= created - end <= timedelta(seconds=1), created - end
        with psycopg.connect(subs.database_url, autocommit=True) as conn:
            renewed = store.renew(conn, sub.id, _now())
            status = conn.execute("SELECT desired, reason FROM lockout_decisions ORDER BY id").fetchall()
        assert renewed.period_end > _now() + timedelta(days=27)
        asked = _now()
        wait_until(lambda: len(commands_for(subs)) == 2, 5, "the unlock")
        unlock = commands_for(subs)[1]
        assert unlock[:2] == ("bike-1", "unlock") and unlock[2] - asked <= timedelta(seconds=1)
        time.sleep(0.5)
    assert [d for d, _ in status] == ["lock"] and "notice given" in status[0][1]
    assert len(commands_for(subs)) == 2  # nothing for the active bike, nothing twice


def test_no_lock_without_notice_the_engine_queues_one(subs: Endpoints) -> None:
    add_devices(subs, ["bike-1"])
    now = _now()
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        subscribe(conn, ["bike-1"], now - timedelta(minutes=1), now, notice_at=None)
    with lockout_engine(subs, PolicySettings(notice=timedelta(seconds=1))):
        with psycopg.connect(subs.database_url, autocommit=True) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM outbox WHERE kind = 'overdue'").fetchone()[0] == 2,
                       5, "overdue notices queued")  # fmt: skip
            time.sleep(0.5)
            assert commands_for(subs) == []
            held = conn.execute("SELECT desired, reason FROM lockout_decisions").fetchall()
            assert held and held[0][0] == "none" and "waits for notice" in held[0][1]
            sent = _now()
            conn.execute("UPDATE outbox SET state = 'sent', sent_at = %s", (sent,))  # what the sender does
        wait_until(lambda: len(commands_for(subs)) == 1, 5, "the lock after the notice period")
        assert commands_for(subs)[0][2] - sent >= timedelta(seconds=1)


def test_exempt_device_is_left_alone(subs: Endpoints) -> None:
    from subscriptions.model import Exemption

    add_devices(subs, ["bike-1", "bike-2"])
    now = _now()
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        store.exempt(conn, Exemption("bike-1", now + timedelta(days=2), "in the workshop", "tests"), now)
        subscribe(conn, ["bike-1", "bike-2"], now - timedelta(seconds=1), now, notice_at=now - timedelta(days=4))
    with lockout_engine(subs):
        wait_until(lambda: len(commands_for(subs)) == 1, 5, "the lock")
        time.sleep(0.5)
    assert [c[0] for c in commands_for(subs)] == ["bike-2"]


def _many(subs: Endpoints, n: int, spread_s: float, start_in_s: float) -> tuple[list[str], datetime]:
    devices = [f"bike-{i:04d}" for i in range(n)]
    add_devices(subs, devices)
    now = _now()
    start = now + timedelta(seconds=start_in_s)
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        for i, device in enumerate(devices):
            subscribe(
                conn, [device], start + timedelta(seconds=spread_s * i / n), now, notice_at=now - timedelta(days=4)
            )
    return devices, start


def _once_each(subs: Endpoints, devices: list[str]) -> None:
    locks = Counter(d for d, action, _, _ in commands_for(subs) if action == "lock")
    assert set(locks) == set(devices), f"missed: {sorted(set(devices) - set(locks))[:5]}"
    assert max(locks.values()) == 1, f"twice: {[d for d, n in locks.items() if n > 1][:5]}"
    with psycopg.connect(subs.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM lockout_decisions WHERE desired = 'lock'").fetchone()[0] == len(
            devices
        )


def test_two_engines_issue_each_lock_once(subs: Endpoints) -> None:
    devices, _ = _many(subs, 200, spread_s=2.0, start_in_s=1.0)
    with lockout_engine(subs), lockout_engine(subs):
        wait_until(lambda: len(commands_for(subs)) >= len(devices), 20, "every lock")
        time.sleep(1.0)
    _once_each(subs, devices)


def test_kill_9_mid_run_loses_and_repeats_nothing(subs: Endpoints, tmp_path: Path) -> None:
    proc = spawn_service("lockout", subs, "k9", tmp_path)
    log = tmp_path / "lockout-k9.log"
    try:
        wait_until(lambda: log.exists() and "evaluated on start" in log.read_text(), 30, "the engine's start")
        devices, _ = _many(subs, 300, spread_s=8.0, start_in_s=1.0)  # created while it runs: NOTIFY
        wait_until(lambda: len(commands_for(subs)) > 0, 20, "first locks")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = len(commands_for(subs))
        assert 0 < before < len(devices), before
        time.sleep(3.0)  # more come due while it is down
        assert len(commands_for(subs)) == before
        proc = spawn_service("lockout", subs, "k9", tmp_path)
        wait_until(lambda: len(commands_for(subs)) >= len(devices), 30, "the catch-up")
        time.sleep(1.0)
    finally:
        stop_service(proc)
    _once_each(subs, devices)


def test_a_lock_that_expired_undelivered_is_issued_again(subs: Endpoints) -> None:
    from dataclasses import replace

    from commands_harness import FAST, command_service

    from commands.model import DEFAULT_TTL_S, Action

    short = replace(FAST, ttl_s={**DEFAULT_TTL_S, Action.LOCK: 1.5})
    add_devices(subs, ["bike-1"])  # never online: the lock cannot be delivered
    now = _now()
    with psycopg.connect(subs.database_url, autocommit=True) as conn:
        subscribe(conn, ["bike-1"], now, now, notice_at=now - timedelta(days=4))
    with command_service(subs), lockout_engine(subs, rules=short):
        wait_until(lambda: len(commands_for(subs)) == 2, 20, "the lock issued again after it expired")
    with psycopg.connect(subs.database_url) as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM commands ORDER BY created_at").fetchall()]
        reasons = [r[0] for r in conn.execute("SELECT reason FROM lockout_decisions ORDER BY id").fetchall()]
    assert states[0] == "expired" and "issued again" in reasons[1]
