"""`fleet notify serve | status | run-once`: the reminder and outbox sender, and a look at its queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Reminders, overdue notices, welcome messages and the staff digest (docs/subscriptions.md).")
console = Console()

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")]


def _database_url(state_dir: Path | None) -> str:
    """The notify service's own database role (fleet_notify)."""
    from kernel.settings import Settings
    from localstack.resolve import resolve

    return resolve(Settings.at(state_dir), service="notify").database_url


@app.command("serve")
def serve(state_dir: StateDir = None) -> None:
    """Run the sender (several may run: rows are claimed with SKIP LOCKED). Settings: FLEET_NOTIFY_*."""
    from kernel.process import setup_logging
    from subscriptions.sender import run_notify
    from subscriptions.settings import NotifySettings

    setup_logging()
    run_notify(_database_url(state_dir), NotifySettings())


@app.command("run-once")
def run_once(state_dir: StateDir = None) -> None:
    """Queue what is due now and deliver one batch, then exit (for cron or a first look)."""
    import threading
    from datetime import UTC, datetime

    from subscriptions.sender import NotifyService
    from subscriptions.settings import NotifySettings

    service = NotifyService(_database_url(state_dir), NotifySettings())
    try:
        queued = service.run_scheduler(datetime.now(UTC))
        claimed = service.deliver_due(threading.Event())
    finally:
        service.close()
    s = service.stats
    console.print(f"queued {queued}, claimed {claimed}: sent {s.sent}, retried {s.retried}, failed {s.failed}, "
                  f"skipped {s.skipped}")  # fmt: skip


@app.command("status")
def status(state_dir: StateDir = None, failed: int = 20) -> None:
    """Outbox rows by state, and the latest failures with their last error."""
    import psycopg

    from subscriptions import outbox_store

    with psycopg.connect(_database_url(state_dir)) as conn:
        counts = outbox_store.counts(conn)
        rows = outbox_store.failed_rows(conn, failed)
    console.print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "the outbox is empty")
    if rows:
        table = Table("id", "kind", "channel", "recipient", "attempts", "last error")
        for r in rows:
            table.add_row(str(r["id"]), r["kind"], r["channel"], r["recipient"], str(r["attempts"]), r["last_error"])
        console.print(table)
