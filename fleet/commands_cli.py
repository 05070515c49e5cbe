"""`fleet commands serve | send | list | show | cancel`: the service, and an operator's view of it."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Remote commands: lock, unlock, locate, alarm, set_speed_limit (docs/commands.md).")
console = Console()

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")]


def _endpoints(state_dir: Path | None):  # type: ignore[no-untyped-def]
    """The command service's own accounts (database role, Redis user, broker account fleet-commands)."""
    from kernel.settings import Settings
    from localstack.resolve import resolve

    return resolve(Settings.at(state_dir), service="commands")


def _rules():  # type: ignore[no-untyped-def]
    from commands.settings import CommandSettings

    return CommandSettings().rules()


@app.command("serve")
def serve(
    state_dir: StateDir = None,
    instance: Annotated[str | None, typer.Option(help="Stable id of this service (its consumer name).")] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port (0: off).", min=0, max=65535)
    ] = 0,
) -> None:
    """Run the command service (several may run). Rules from FLEET_COMMANDS_* (docs/commands.md)."""
    from commands.service import run_commands
    from kernel import metrics
    from kernel.process import setup_logging

    setup_logging()
    endpoints = _endpoints(state_dir)
    if not endpoints.mqtt_url:
        console.print("[red]no command service account: set FLEET_MQTT_COMMANDS_URL[/red]")
        raise typer.Exit(1)
    from commands.settings import CommandSettings

    settings = CommandSettings()
    metrics.serve(metrics_port, endpoints.redis_url, ["commands"])
    run_commands(endpoints.mqtt_url, endpoints.redis_url, endpoints.database_url, settings.rules(), instance,
                 settings.publishers)  # fmt: skip


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@app.command("send")
def send(
    device_id: str,
    action: str,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE (JSON value).")] = None,
    reason: str = "operator",
    force: Annotated[bool, typer.Option(help="Lock even a moving vehicle (an operator's decision).")] = False,
    ttl: Annotated[float | None, typer.Option(help="Time to live in seconds (default per action).")] = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    by: Annotated[str | None, typer.Option(help="Who asks (default cli:$USER).")] = None,
    state_dir: StateDir = None,
) -> None:
    """Issue a command to a device."""
    import psycopg
    import redis

    from commands.issue import CommandRefused, CommandRequest, issue
    from commands.model import Action

    try:
        act = Action(action)
    except ValueError:
        console.print(f"[red]unknown action {action!r}; one of {', '.join(a.value for a in Action)}[/red]")
        raise typer.Exit(2) from None
    endpoints = _endpoints(state_dir)
    req = CommandRequest(device_id, act, by or f"cli:{getpass.getuser()}", reason, dict(map(_param, param or [])),
                         force, ttl, key)  # fmt: skip
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            issued = issue(conn, client, req, _rules(), datetime.now(UTC))
    except CommandRefused as exc:
        console.print(f"[red]{exc.status}: {exc.reason}[/red]")
        raise typer.Exit(1) from None
    finally:
        client.close()
    c = issued.command
    console.print(f"{c.id} {c.action} → {c.device_id}: {c.state} {c.detail}".rstrip())
    for old in issued.superseded:
        console.print(f"  supersedes {old}")


@app.command("list")
def list_(device: str | None = None, state: str | None = None, limit: int = 50, state_dir: StateDir = None) -> None:
    """The latest commands, newest first."""
    import psycopg

    from commands import store

    with psycopg.connect(_endpoints(state_dir).database_url) as conn:
        rows = store.listing(conn, device=device, state=state, since=None, limit=limit)
    table = Table("id", "device", "action", "state", "created", "by", "detail")
    for c in rows:
        table.add_row(c.id, c.device_id, str(c.action), str(c.state), c.created_at.isoformat(timespec="seconds"),
                      c.requested_by, c.detail)  # fmt: skip
    console.print(table)


@app.command("show")
def show(command_id: str, state_dir: StateDir = None) -> None:
    """One command and its transitions (the audit log)."""
    import psycopg

    from commands import store

    with psycopg.connect(_endpoints(state_dir).database_url) as conn:
        stored = store.get(conn, command_id)
        if stored is None:
            console.print(f"[red]unknown command {command_id}[/red]")
            raise typer.Exit(1)
        log = store.transitions(conn, command_id)
    c = stored.command
    console.print(f"{c.id} {c.action} {dict(c.params)} → {c.device_id}, reason {c.reason}, by {c.requested_by}"
                  f"{' (forced)' if c.force else ''}: {c.state}, expires {c.expires_at.isoformat()}")  # fmt: skip
    for t in log:
        console.print(f"  {t.at.isoformat()}  {t.from_state or '-'} → {t.to_state}  {t.actor}  {t.detail}")


@app.command("cancel")
def cancel(command_id: str, by: str | None = None, state_dir: StateDir = None) -> None:
    """Cancel a command not yet delivered."""
    import psycopg
    import redis

    from commands.issue import CommandRefused
    from commands.issue import cancel as cancel_command

    endpoints = _endpoints(state_dir)
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            c = cancel_command(conn, client, command_id, by or f"cli:{getpass.getuser()}", datetime.now(UTC))
    except CommandRefused as exc:
        console.print(f"[red]{exc.status}: {exc.reason}[/red]")
        raise typer.Exit(1) from None
    finally:
        client.close()
    console.print(f"{c.id}: {c.state}")
