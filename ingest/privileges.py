"""What each service may do to each table: the one place the database grants are written down.

`migrate()` applies this table after every run (ingest/migrate.py), so a table added by a migration
gets its grants by a line here, and a test fails while any table of the schema is missing from it
(tests/integration/test_privileges.py). Privileges are read off the code that uses each table:

- `COPY ... FROM` needs INSERT; `INSERT ... ON CONFLICT (columns)` needs SELECT on those columns
  (a bare `ON CONFLICT DO NOTHING` does not), and `DO UPDATE` needs UPDATE too; an UPDATE or
  DELETE with a WHERE clause, or `RETURNING`, needs SELECT.
- Triggers run with the privileges of whoever fires them: writing `zones` bumps `zone_catalog` and,
  on delete, inserts into `zone_deletions` (migration 0002).
- TimescaleDB hands a hypertable's grants on to its chunks, present and future, and takes them back
  the same way.
- Identity columns (`device_keys.key`) draw from their sequence without any grant on it.

A table listed here that does not exist (yet) is skipped, so the entries of tables that come with
later migrations can be written down before they arrive. `schema_migrations` and anything else in
`OWNER_ONLY` is for the owner alone. Pure data: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVICES = ("ingest", "geofence", "commands", "api")
ROLE_PREFIX = "fleet_"  # the role of service S is fleet_S (gateway.stack.model.database_role)

READ = ("SELECT",)
APPEND = ("INSERT",)
READ_APPEND = ("SELECT", "INSERT")
READ_WRITE = ("SELECT", "INSERT", "UPDATE")
ALL_ROWS = ("SELECT", "INSERT", "UPDATE", "DELETE")

OWNER_ONLY = frozenset({"schema_migrations"})

TABLE_PRIVILEGES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    # ingest/store.py: binary COPY, and on replays a temporary `LIKE telemetry` staging table (LIKE
    # reads the table's definition: SELECT) merged with INSERT ... ON CONFLICT DO NOTHING
    # the API reads a vehicle's history (the map's track of a vehicle), by its key
    "telemetry": {"ingest": READ_APPEND, "api": READ},
    "device_keys": {"ingest": READ_APPEND, "api": READ},
    "dead_letters": {"ingest": APPEND, "geofence": APPEND, "commands": APPEND},  # and what each refuses
    # the device registry (API) and the utilization rollup (geofence: registration dates)
    "devices": {"api": ALL_ROWS, "geofence": READ, "commands": READ},
    # zones are edited through the API; the geofence worker follows the catalog version
    "zones": {"api": ALL_ROWS, "geofence": READ},
    "zone_catalog": {"api": ("SELECT", "UPDATE"), "geofence": READ},
    "zone_deletions": {"api": APPEND, "geofence": READ},
    # geofence: ON CONFLICT (device_id, zone_id, kind, time); commands: theft_suspected, bare ON CONFLICT
    "zone_events": {"geofence": READ_APPEND, "api": READ, "commands": APPEND},
    "trips": {"geofence": READ_WRITE, "api": READ},
    "device_service": {"api": READ_WRITE, "geofence": READ},
    # recomputed by the geofence worker, and by the API when a device's service status changes
    "utilization_hourly": {"geofence": ALL_ROWS, "api": ALL_ROWS},
    # commands (migration 0007): the command service moves commands along, the API creates and
    # cancels them; transitions are an append-only log
    "commands": {"commands": READ_WRITE, "api": READ_WRITE},
    "command_transitions": {"commands": READ_APPEND, "api": READ_APPEND},
    # API keys and the audit trail (migration 0006): keys are created and revoked, never deleted;
    # the audit trail is only ever appended to
    "api_keys": {"api": READ_WRITE},
    "audit_log": {"api": READ_APPEND},
}


def role(service: str) -> str:
    return ROLE_PREFIX + service


def wanted(tables: set[str]) -> set[tuple[str, str, str]]:
    """(table, role, privilege) for every table in `tables` that the table above lists."""
    return {
        (table, role(service), privilege)
        for table, grants in TABLE_PRIVILEGES.items()
        if table in tables
        for service, privileges in grants.items()
        for privilege in privileges
    }


def unlisted(tables: set[str]) -> set[str]:
    """Tables of the schema that nobody has decided about: neither granted nor owner-only."""
    return tables - set(TABLE_PRIVILEGES) - OWNER_ONLY
