"""Least privilege on the real servers: every service's database role and Redis user can do what its
code does and is refused the rest; the grant table covers every table; the service processes log in
as themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from fleet_harness import stop_service, wait_for
from psycopg import errors

from gateway import keys
from gateway.config import Endpoints
from gateway.records import DeadLetter, Source, Telemetry
from ingest import privileges
from ingest.migrate import apply_privileges, migrate, public_tables
from ingest.store import DeadRow, DeviceKeys, WritePlan, telemetry_rows, write_batch

pytestmark = pytest.mark.integration

BASE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
INSERT_TELEMETRY = (
    "INSERT INTO telemetry (time, device_id, device_key, received_at, source) VALUES (now(), 'x', 1, now(), '')"
)


@pytest.fixture
def own(endpoints: Endpoints) -> Endpoints:
    if not endpoints.services:
        pytest.skip("servers given as one set of URLs: the services' accounts are the operator's")
    return endpoints


def _as(endpoints: Endpoints, service: str) -> psycopg.Connection:
    return psycopg.connect(endpoints.for_service(service).database_url, autocommit=True)


def _refused(conn: psycopg.Connection, statement: str) -> bool:
    try:
        conn.execute(statement)
    except (errors.InsufficientPrivilege, errors.UndefinedTable):
        return True
    return False


def test_every_table_of_the_schema_has_its_grants_written_down(endpoints: Endpoints) -> None:
    """A migration that adds a table fails this until ingest/privileges.py says who may use it."""
    with psycopg.connect(endpoints.database_url) as conn:
        tables = public_tables(conn)
    assert "telemetry" in tables
    assert privileges.unlisted(tables) == set(), "add these tables to ingest/privileges.py"


def test_the_api_role_reads_what_it_serves_and_cannot_write_telemetry(own: Endpoints) -> None:
    with _as(own, "api") as conn:
        for table in ("devices", "zones", "zone_events", "trips", "utilization_hourly", "device_service", "telemetry",
                      "device_keys"):  # fmt: skip
            conn.execute(f"SELECT count(*) FROM {table}")
        assert _refused(conn, INSERT_TELEMETRY)
        assert _refused(conn, "UPDATE telemetry SET lat = 0")
        assert _refused(conn, "DELETE FROM telemetry")
        assert _refused(conn, "TRUNCATE devices")
        assert _refused(conn, "INSERT INTO dead_letters (stream_entry, seq, received_at, topic, reason, payload)"
                              " VALUES ('1-0', 0, now(), 't', 'r', '')")  # fmt: skip
        assert _refused(conn, "CREATE TABLE mine (x int)")


def test_the_ingest_role_stores_batches_and_can_change_nothing_else(own: Endpoints) -> None:
    """The real write path under the ingest role: new keys, the direct COPY, the merge through a
    temporary staging table (a replay), dead letters; then what it must never do."""
    records = [Telemetry("priv-ingest", BASE + timedelta(days=d), Source.JSON, 52.5, 13.4) for d in range(3)]
    received = [BASE] * len(records)
    letter = DeadLetter("fleet/x/telemetry", b"{", "malformed_json", BASE)
    with _as(own, "ingest") as conn:
        conn.autocommit = False
        conn.commit()
        rows = telemetry_rows(records, received, DeviceKeys().keys_for(conn, records))
        first = write_batch(conn, rows, [DeadRow("9-0", 1, letter)], WritePlan())
        again = write_batch(conn, rows, [DeadRow("9-0", 1, letter)], WritePlan(merge_left=1))
        conn.autocommit = True
        assert (first.inserted, again.inserted, again.merged) == (3, 0, True)
        for statement in ("DROP TABLE telemetry", "ALTER TABLE telemetry ADD COLUMN x int", "TRUNCATE telemetry",
                          "DELETE FROM telemetry", "UPDATE telemetry SET lat = 0", "SELECT * FROM devices",
                          "INSERT INTO zones (id, kind, geometry) VALUES ('z', 'slow', '{}')",
                          "DROP TABLE schema_migrations", "CREATE TABLE public.mine (x int)"):  # fmt: skip
            assert _refused(conn, statement), statement


def test_the_geofence_role_never_touches_telemetry_or_edits_zones(own: Endpoints) -> None:
    with _as(own, "geofence") as conn:
        conn.execute("SELECT version FROM zone_catalog")
        assert _refused(conn, "SELECT count(*) FROM telemetry")
        assert _refused(conn, "DELETE FROM zones")
        assert _refused(conn, "UPDATE devices SET status = 'disabled'")


def test_chunks_carry_their_hypertables_grants(own: Endpoints) -> None:
    """TimescaleDB copies a hypertable's grants to every chunk, including ones created later by a
    service: a chunk is not a side door to the table."""
    with _as(own, "ingest") as conn:
        conn.execute(
            "INSERT INTO device_keys (id) VALUES ('priv-chunk') ON CONFLICT DO NOTHING;"
            " INSERT INTO telemetry (time, device_id, device_key, received_at, source)"
            " SELECT '2024-02-29T12:00:00Z', id, key, now(), 'json' FROM device_keys WHERE id = 'priv-chunk'"
            " ON CONFLICT DO NOTHING"
        )
    with psycopg.connect(own.database_url) as conn:
        chunks = [
            f"{schema}.{name}"
            for schema, name in conn.execute(
                "SELECT chunk_schema, chunk_name FROM timescaledb_information.chunks"
                " WHERE hypertable_name = 'telemetry'"
            )
        ]
        assert chunks
        for chunk in chunks:
            can = conn.execute(
                "SELECT has_table_privilege('fleet_ingest', %(c)s, 'INSERT'),"
                " has_table_privilege('fleet_api', %(c)s, 'SELECT'), has_table_privilege('fleet_api', %(c)s, 'INSERT')",
                {"c": chunk},
            ).fetchone()
            assert can == (True, True, False), chunk  # the API reads history (a track), never writes it
    with _as(own, "api") as conn:
        assert _refused(conn, f"INSERT INTO {chunks[0]} (time, device_id, device_key, received_at, source)"
                              " VALUES ('2024-02-29T13:00:00Z', 'x', 1, now(), 'json')")  # fmt: skip


def test_grants_are_brought_back_to_the_table_on_every_run(own: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grant added by hand is taken back, a table added later gets its line's grants."""
    with psycopg.connect(own.database_url, autocommit=True) as conn:
        conn.execute("GRANT INSERT, DELETE ON telemetry TO fleet_api")
        conn.execute("CREATE TABLE later_table (x int)")
        try:
            monkeypatch.setitem(privileges.TABLE_PRIVILEGES, "later_table", {"geofence": ("SELECT",)})  # type: ignore[arg-type]
            migrate(own.database_url)
            assert conn.execute("SELECT has_table_privilege('fleet_api', 'telemetry', 'INSERT')").fetchone() == (False,)
            assert conn.execute("SELECT has_table_privilege('fleet_geofence', 'later_table', 'SELECT')").fetchone() == (
                True,
            )
            assert conn.execute("SELECT has_table_privilege('fleet_api', 'later_table', 'SELECT')").fetchone() == (
                False,
            )
        finally:
            conn.execute("DROP TABLE later_table")
        with conn.transaction():
            apply_privileges(conn)  # nothing left to change: no statement fails, nothing moves


def _redis_as(endpoints: Endpoints, service: str) -> redis.Redis:
    return redis.Redis.from_url(endpoints.for_service(service).redis_url or "")


def _noperm(action) -> bool:  # type: ignore[no-untyped-def]
    try:
        action()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_redis_users_are_refused_outside_their_keys(own: Endpoints) -> None:
    gateway, ingest, geofence, api = (_redis_as(own, s) for s in ("gateway", "ingest", "geofence", "api"))
    try:
        gateway.hincrby(keys.COUNTERS, "priv-test", 1)
        assert _noperm(lambda: gateway.hgetall(keys.VEHICLES))
        assert _noperm(lambda: gateway.sadd(keys.DEVICES, "forged"))  # only the registry admits devices
        assert _noperm(lambda: gateway.xadd(keys.POSITIONS_STREAM, {"d": "x"}))
        assert _noperm(lambda: ingest.flushdb())
        assert _noperm(lambda: ingest.keys("*"))
        assert _noperm(lambda: ingest.config_get("requirepass"))
        assert _noperm(lambda: ingest.smembers(keys.DEVICES))
        assert _noperm(lambda: geofence.hget(keys.VEHICLES, "x"))
        assert _noperm(lambda: geofence.xadd(keys.INGEST_STREAM, {"d": "x"}))
        api.hgetall(keys.VEHICLES)
        assert _noperm(lambda: api.hset(keys.VEHICLES, "x", "{}"))
        assert _noperm(lambda: api.xadd(keys.INGEST_STREAM, {"d": "x"}))
        assert _noperm(lambda: api.delete(keys.INGEST_STREAM))
    finally:
        for client in (gateway, ingest, geofence, api):
            client.close()
    anonymous = redis.Redis(
        host="127.0.0.1", port=redis.Redis.from_url(own.redis_url).connection_pool.connection_kwargs["port"]
    )
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()


@pytest.fixture
def geofence_process(own: Endpoints, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**own.service_env("geofence", os.environ), "FLEET_GEOFENCE_ID": "priv-test"}
    assert "FLEET_DATABASE_URL" in env and "fleet_geofence" in env["FLEET_DATABASE_URL"]
    with (tmp_path / "geofence.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "geofence"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc
    finally:
        stop_service(proc)


def test_a_service_process_logs_in_as_its_own_role_and_user(own: Endpoints, geofence_process) -> None:  # type: ignore[no-untyped-def]
    """`fleet geofence` handed its own URLs (as the demo does) connects as fleet_geofence and fleet-geofence."""

    def database_user() -> str | None:
        with psycopg.connect(own.database_url) as conn:
            row = conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE application_name = 'fleet geofence-priv-test'"
            ).fetchone()
        return row[0] if row else None

    wait_for(lambda: database_user() is not None, what="geofence worker's database session")
    assert database_user() == "fleet_geofence"
    admin = redis.Redis.from_url(own.redis_url)
    try:
        users = {c.get("user") for c in admin.client_list()}
    finally:
        admin.close()
    assert "fleet-geofence" in users
