"""`fleet keys create|list|revoke`: operator API keys from the server's shell.

This is how the first admin key comes to be (the API's own key routes need one). Creating and
revoking are audited under `cli:<user>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

keys_app = typer.Typer(help="Operator API keys: create (shown once), list, revoke.", no_args_is_help=True)
console = Console()
StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")]


def _database_url(state_dir: Path | None) -> str:
    """The owner's database URL: keys are managed on the server, as `fleet migrate` runs."""
    from kernel.settings import Settings
    from localstack.resolve import resolve

    return resolve(Settings.at(state_dir)).database_url


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer | operator | admin")],
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
    state_dir: StateDir = None,
) -> None:
    """Create an API key and print it (shown once; only its hash is stored)."""
    from api.keys import Role
    from api.keystore import Actor, create_key
    from geofence.store import connect

    try:
        chosen = Role(role)
    except ValueError:
        console.print(f"[red]unknown role {role!r}: viewer, operator or admin[/red]")
        raise typer.Exit(2) from None
    if not 1 <= len(name) <= 100 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        console.print("[red]--name must be 1-100 printable characters[/red]")
        raise typer.Exit(2)
    with connect(_database_url(state_dir), "fleet keys") as conn:
        key, token = create_key(conn, name, chosen, Actor.cli(), "cli: fleet keys create")
    console.print(f"key {key.id} ({key.role}, {key.name}); shown once:", highlight=False)
    console.print(token, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(state_dir: StateDir = None) -> None:
    """Every key: id, role, name, created, last used, revoked (never a secret)."""
    from api.keystore import list_keys
    from geofence.store import connect

    with connect(_database_url(state_dir), "fleet keys") as conn:
        keys = list_keys(conn)
    for k in keys:
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never used"
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        console.print(f"{k.id}  {k.role:8} {k.name:24} {k.created_at:%Y-%m-%d %H:%M}  {used:16} {state}",
                      highlight=False)  # fmt: skip


@keys_app.command("revoke")
def keys_revoke(key_id: str, state_dir: StateDir = None) -> None:
    """Revoke a key by its id: refused by the API from the next request on."""
    from api.keystore import Actor, revoke_key
    from geofence.store import connect

    with connect(_database_url(state_dir), "fleet keys") as conn:
        key = revoke_key(conn, key_id, Actor.cli(), "cli: fleet keys revoke")
    if key is None:
        console.print(f"[red]no key {key_id!r}[/red]")
        raise typer.Exit(1)
    console.print(f"key {key.id} ({key.name}) revoked", highlight=False)
