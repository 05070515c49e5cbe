"""`fleet import FILE.xml|FILE.csv`: devices, customers and subscriptions in bulk, with a report."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
PROGRESS_FROM = 500  # rows: smaller files finish before a bar would be worth drawing


def import_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .csv or .xml file.")],
    partial: Annotated[bool, typer.Option(help="Import the valid rows even if others have errors.")] = False,
    credentials: Annotated[
        Path | None, typer.Option(help="Write new devices' MQTT credentials here (CSV, mode 600).")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")] = None,
) -> None:
    """Import devices (IMEI or serial), customers, plans' subscriptions from a file (docs/subscriptions.md)."""
    from kernel.settings import Settings
    from localstack.resolve import local_stack, resolve
    from provisioning.broker_admin import BrokerAdmin
    from provisioning.registry import DeviceRegistry
    from subscriptions.importer_store import run_import

    settings = Settings.at(state_dir)
    endpoints = resolve(settings, service="api")
    if not endpoints.mqtt_admin_url:
        console.print("[red]no broker admin account: set FLEET_MQTT_ADMIN_URL[/red]")
        raise typer.Exit(1)
    bulk = local_stack(settings).register_devices if endpoints.local_stack and not settings.mqtt_url else None
    registry = DeviceRegistry(endpoints.database_url, endpoints.redis_url, BrokerAdmin(endpoints.mqtt_admin_url),
                              broker_bulk=bulk)  # fmt: skip
    data = file.read_bytes()
    try:
        with _progress(data.count(b"\n")) as show:
            report = run_import(file.name, data, endpoints.database_url, registry, datetime.now(UTC), partial=partial,
                                progress=show.update, chunk=100_000 if bulk else 500)  # fmt: skip
    finally:
        registry.close()
    _print(report)
    if credentials is not None and report.credentials:
        _write_credentials(credentials, report.credentials)
        console.print(f"credentials of {len(report.credentials)} new devices in {credentials}")
    raise typer.Exit(0 if report.imported or not report.errors else 1)


class _progress:
    """A rich progress bar per stage on large files; nothing on small ones."""

    def __init__(self, lines: int) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=console, disable=lines < PROGRESS_FROM)  # fmt: skip
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> _progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)  # type: ignore[arg-type]


def _print(report) -> None:  # type: ignore[no-untyped-def]
    if report.errors:
        table = Table("row", "field", "reason", title=f"{len(report.errors)} errors")
        for e in report.errors[:200]:
            table.add_row(str(e.row), e.field, e.reason)
        console.print(table)
        if len(report.errors) > 200:
            console.print(f"... and {len(report.errors) - 200} more")
    console.print(f"{report.rows} rows, {report.valid} valid: {report.outcome}")
    if report.imported:
        console.print(f"devices registered {report.devices_registered}, customers written {report.customers_written},"
                      f" subscriptions written {report.subscriptions_written}, assignments written "
                      f"{report.assignments_written}")  # fmt: skip


def _write_credentials(path: Path, creds: list) -> None:  # type: ignore[type-arg]
    import io

    from kernel.secretfile import write_private

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["device_id", "username", "password"])
    writer.writerows((c.device_id, c.username, c.password) for c in creds)
    write_private(path, out.getvalue())
