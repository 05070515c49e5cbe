"""The integer device keys behind telemetry's uniqueness rule, on the real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import Endpoints

from ingest.migrate import available, migrate
from ingest.store import DeviceKeys, WritePlan, telemetry_rows, write_batch
from kernel.records import Source, Telemetry

BASE = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _records(device_id: str, seconds: range) -> list[Telemetry]:
    return [Telemetry(device_id, BASE + timedelta(seconds=s), Source.JSON, 52.5, 13.4) for s in seconds]


def test_two_workers_meeting_a_new_device_get_the_same_key(clean: Endpoints) -> None:
    records = _records("dk-new", range(3))
    with psycopg.connect(clean.database_url) as a, psycopg.connect(clean.database_url) as b:
        key_a = DeviceKeys().keys_for(a, records)
        key_b = DeviceKeys().keys_for(b, records)
    assert key_a == key_b == [key_a[0]] * 3


def test_a_key_outlives_a_failed_batch_and_the_device(clean: Endpoints) -> None:
    """The key is committed before the batch, so a failed batch leaves no key behind that the
    database lacks; deleting the device keeps its key, so its history continues on re-registering."""
    keys = DeviceKeys()
    bad = [Telemetry("dk-kept", BASE, Source.JSON, 52.5, None)]  # breaks telemetry's lat/lon CHECK
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        first = keys.keys_for(conn, bad)
        with pytest.raises(psycopg.errors.CheckViolation):
            write_batch(conn, telemetry_rows(bad, [BASE], first), [], WritePlan())
        assert conn.execute("SELECT key FROM device_keys WHERE id = 'dk-kept'").fetchone() == (first[0],)
        records = _records("dk-kept", range(2))
        write_batch(conn, telemetry_rows(records, [BASE] * 2, keys.keys_for(conn, records)), [], WritePlan())
        conn.execute("DELETE FROM devices WHERE id = 'dk-kept'")
        assert DeviceKeys().keys_for(conn, _records("dk-kept", range(2, 3))) == first
        count = conn.execute(
            "SELECT count(*) FROM telemetry t JOIN device_keys k ON k.key = t.device_key WHERE k.id = 'dk-kept'"
        ).fetchone()
    assert count == (2,)


def test_keys_are_not_given_inside_another_transaction(clean: Endpoints) -> None:
    """Inside an open transaction the key would be a savepoint's, undone with the batch."""
    with psycopg.connect(clean.database_url) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(RuntimeError, match="transaction of their own"):
            DeviceKeys().keys_for(conn, _records("dk-inside", range(1)))


def test_rows_of_a_batch_are_copied_in_key_order(clean: Endpoints) -> None:
    keys = DeviceKeys()
    records = [r for pair in zip(_records("dk-b", range(3)), _records("dk-a", range(3)), strict=True) for r in pair]
    with psycopg.connect(clean.database_url) as conn:
        rows = telemetry_rows(records, [BASE] * len(records), keys.keys_for(conn, records))
        result = write_batch(conn, rows, [], WritePlan())
    assert result.inserted == 6
    order = [(row[1], row[0]) for row in rows]
    by_key = sorted({r.device_id for r in records}, key=keys.known.__getitem__)
    assert order == [(d, BASE + timedelta(seconds=s)) for d in by_key for s in range(3)]


@pytest.fixture
def old_database(clean: Endpoints) -> Iterator[str]:
    """A database at schema version 3 (text-keyed telemetry), beside the test database."""
    name = "fleet_upgrade_test"
    with psycopg.connect(clean.database_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    url = clean.database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available():
            if migration.version <= 3:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (migration.version, migration.name))
    try:
        yield url
    finally:
        with psycopg.connect(clean.database_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_upgrade_gives_stored_history_its_keys(old_database: str) -> None:
    with psycopg.connect(old_database, autocommit=True) as conn:
        for device in ("old-b", "old-a"):
            for s in range(4):
                conn.execute(
                    "INSERT INTO telemetry (time, device_id, received_at, source) VALUES (%s, %s, %s, 'json')",
                    (BASE + timedelta(days=s), device, BASE),  # four daily chunks
                )
    assert [m.version for m in migrate(old_database)] == [m.version for m in available() if m.version >= 4]
    with psycopg.connect(old_database, autocommit=True) as conn:
        keys = dict(conn.execute("SELECT id, key FROM device_keys").fetchall())
        pairs = conn.execute("SELECT DISTINCT device_id, device_key FROM telemetry").fetchall()
        assert sorted(keys) == ["old-a", "old-b"]
        assert sorted(pairs) == sorted(keys.items())
        records = _records("old-a", range(1))
        assert DeviceKeys().keys_for(conn, records) == [keys["old-a"]]
        replay = write_batch(conn, telemetry_rows(records, [BASE], [keys["old-a"]]), [], WritePlan())
        assert (replay.inserted, replay.duplicates) == (0, 1)
