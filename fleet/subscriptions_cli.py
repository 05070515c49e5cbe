"""`fleet subscriptions list | renew | pay | cancel | exempt` and `fleet lockout` (the engine)."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Subscriptions: list, renew, record a payment, cancel, exempt (docs/subscriptions.md).")
console = Console()

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")]


def _endpoints(state_dir: Path | None, service: str):  # type: ignore[no-untyped-def]
    from kernel.settings import Settings
    from localstack.resolve import resolve

    return resolve(Settings.at(state_dir), service=service)


def _database_url(state_dir: Path | None) -> str:
    """The everyday commands change subscriptions as the API does, with the API's database account."""
    return _endpoints(state_dir, "api").database_url


def _subscription_id(conn, given: str) -> UUID:  # type: ignore[no-untyped-def]
    """A subscription id, its external reference, or a device id on it."""
    from subscriptions import store

    try:
        return UUID(given)
    except ValueError:
        pass
    row = conn.execute("SELECT id FROM subscriptions WHERE external_ref = %s", (given,)).fetchone()
    found = row[0] if row else store.subscription_of(conn, given)
    if found is None:
        console.print(f"[red]no subscription {given!r} (id, external reference or device id)[/red]")
        raise typer.Exit(1)
    return found


def _show(sub) -> None:  # type: ignore[no-untyped-def]
    console.print(f"{sub.id} {sub.status} payment {sub.payment_state}, period "
                  f"{sub.period_start.isoformat(timespec='seconds')} → {sub.period_end.isoformat(timespec='seconds')}"
                  f" (version {sub.version})")  # fmt: skip


def _change(state_dir: Path | None, given: str, action) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from subscriptions.store import SubscriptionError

    with psycopg.connect(_database_url(state_dir), autocommit=True) as conn:
        try:
            _show(action(conn, _subscription_id(conn, given), datetime.now(UTC)))
        except SubscriptionError as exc:
            console.print(f"[red]{exc.status}: {exc.reason}[/red]")
            raise typer.Exit(1) from None


@app.command("list")
def list_(
    status: str | None = None, limit: int = 100, state_dir: StateDir = None,
    ending_within: Annotated[float | None, typer.Option(help="Only those ending within so many days.")] = None,
) -> None:  # fmt: skip
    """Subscriptions by end date, with their customer and devices."""
    import psycopg

    from subscriptions import store

    with psycopg.connect(_database_url(state_dir)) as conn:
        before = datetime.now(UTC) + timedelta(days=ending_within) if ending_within is not None else None
        subs = store.list_subscriptions(conn, status=status, ending_before=before, limit=limit)
        names = dict(conn.execute("SELECT id, name FROM customers").fetchall())
        devices: dict[UUID, list[str]] = {}
        for sid, device in conn.execute(
            "SELECT subscription_id, device_id FROM subscription_devices WHERE released_at IS NULL ORDER BY device_id"
        ):
            devices.setdefault(sid, []).append(device)
    table = Table("id", "customer", "plan", "status", "payment", "ends", "devices")
    for s in subs:
        table.add_row(str(s.id), names.get(s.customer_id, "?"), s.plan_id, str(s.status), str(s.payment_state),
                      s.period_end.isoformat(timespec="seconds"), ", ".join(devices.get(s.id, [])))  # fmt: skip
    console.print(table)


@app.command("renew")
def renew(
    subscription: Annotated[str, typer.Argument(help="Subscription id, external reference, or a device id on it.")],
    periods: int = 1, state_dir: StateDir = None,
) -> None:  # fmt: skip
    """Extend by the plan's period, paid: a locked device is unlocked at once."""
    from subscriptions import store

    _change(state_dir, subscription, lambda conn, sid, now: store.renew(conn, sid, now, periods=periods))


@app.command("pay")
def pay(
    subscription: Annotated[str, typer.Argument(help="Subscription id, external reference, or a device id on it.")],
    failed: Annotated[bool, typer.Option("--failed", help="Record a failed payment instead.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Record a payment (paid, or --failed)."""
    from subscriptions import store

    _change(state_dir, subscription, lambda conn, sid, now: store.record_payment(conn, sid, not failed, now))


@app.command("cancel")
def cancel(
    subscription: Annotated[str, typer.Argument(help="Subscription id, external reference, or a device id on it.")],
    state_dir: StateDir = None,
) -> None:
    """Cancel: it runs to the end of the paid period, then its devices are locked."""
    from subscriptions import store

    _change(state_dir, subscription, store.cancel)


@app.command("exempt")
def exempt(device_id: str, days: float, reason: str, by: str | None = None, state_dir: StateDir = None) -> None:
    """Leave a device alone for so many days (the lockout engine neither locks nor unlocks it)."""
    import psycopg

    from subscriptions import store
    from subscriptions.model import Exemption

    now = datetime.now(UTC)
    with psycopg.connect(_database_url(state_dir), autocommit=True) as conn:
        store.exempt(
            conn, Exemption(device_id, now + timedelta(days=days), reason, by or f"cli:{getpass.getuser()}"), now
        )
    console.print(f"{device_id} exempt until {(now + timedelta(days=days)).isoformat(timespec='seconds')}")


def lockout(state_dir: StateDir = None) -> None:
    """Run the lockout engine (several may run). Policy from FLEET_LOCKOUT_* (docs/subscriptions.md)."""
    from commands.settings import CommandSettings
    from kernel.process import setup_logging
    from subscriptions.engine import run_lockout
    from subscriptions.settings import LockoutSettings

    setup_logging()
    endpoints = _endpoints(state_dir, "lockout")
    run_lockout(endpoints.database_url, endpoints.redis_url, LockoutSettings().policy(), CommandSettings().rules())
