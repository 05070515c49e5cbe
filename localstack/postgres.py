"""PostgreSQL 15 with TimescaleDB preloaded, listening on loopback TCP only (no Unix socket).

PostgreSQL refuses to run as root, so when root starts the stack the cluster is created and run as the
`postgres` user, with its folder owned by that user. The superuser role `fleet` has a generated password
(scram-sha-256) rather than trust, because any local account can reach a loopback port.

Every service logs in as a role of its own (`fleet_ingest`, `fleet_geofence`, `fleet_commands`,
`fleet_api`): created here with the passwords kept in credentials.json, and allowed to connect to
the database `fleet` and nothing else. What each may do to each table is granted by the migrations
(ingest/privileges.py), so it holds on external servers too.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psycopg
from psycopg import sql

from kernel.services import database_role
from localstack.errors import StackError
from localstack.install import timescaledb_installed
from localstack.model import DATABASE, DATABASE_USER, LOOPBACK
from localstack.procs import run_as_kwargs
from localstack.server import Log, Server

INCLUDE_LINE = "include_if_exists 'fleet.conf'\n"


def render_config(port: int) -> str:
    """Modest settings for a two-core development box (asynchronous commit: see docs/stack.md)."""
    return f"""# written by `fleet stack up` on every start; edit localstack/postgres.py instead
listen_addresses = '{LOOPBACK}'
port = {port}
unix_socket_directories = ''
max_connections = 100
shared_buffers = 1GB
work_mem = 16MB
maintenance_work_mem = 128MB
effective_cache_size = 1GB
max_wal_size = 2GB
checkpoint_timeout = 10min
wal_compression = on
synchronous_commit = off
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 4
max_worker_processes = 12
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""


class Postgres(Server):
    name = "postgres"
    account = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit

    @property
    def folder(self) -> str:
        return "postgres"

    @property
    def data(self) -> str:
        return str(self.home / "data")

    def prepare(self, log: Log) -> None:
        if not timescaledb_installed(self.binaries.pg_config):
            raise StackError("TimescaleDB is not installed for PostgreSQL 15; run `fleet stack install` (as root)")
        self.own_folder(self.home)
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self._initdb(log)
        self.write_private(self.home / "data" / "fleet.conf", render_config(self.port))
        main_conf = self.home / "data" / "postgresql.conf"
        if INCLUDE_LINE not in main_conf.read_text():
            with main_conf.open("a") as out:
                out.write("\n" + INCLUDE_LINE)

    def _initdb(self, log: Log) -> None:
        log(f"creating the PostgreSQL cluster in {self.data}")
        pwfile = self.home / "initdb-password"
        self.write_private(pwfile, self.credentials.postgres + "\n")
        try:
            done = subprocess.run(
                [
                    str(self.binaries.pg_bin / "initdb"),
                    f"--pgdata={self.data}",
                    f"--username={DATABASE_USER}",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
                cwd=self.home,
                capture_output=True,
                text=True,
                check=False,
                **run_as_kwargs(self.account),  # type: ignore[arg-type]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(f"initdb failed in {self.data}:\n{done.stdout}{done.stderr}")

    def command(self) -> list[str]:
        return [str(self.binaries.pg_bin / "postgres"), "-D", self.data]

    def _connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(
            host=LOOPBACK,
            port=self.port,
            user=DATABASE_USER,
            password=self.credentials.postgres,
            dbname=dbname,
            connect_timeout=2,
            autocommit=True,
        )

    def answers(self) -> bool:
        try:
            with self._connect("postgres") as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise StackError(
                    f"PostgreSQL rejects the password kept in {self.state_dir / 'credentials.json'}; "
                    "delete the state folder to start afresh"
                ) from None
            return False

    def after_start(self, log: Log) -> None:
        with self._connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                log(f"creating database {DATABASE}")
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def provision(self, log: Log) -> None:
        """Each service's login role with its kept password, and who may connect to the database."""
        with self._connect("postgres") as conn:
            for service, password in sorted(self.credentials.database_roles.items()):
                role = database_role(service)
                # the SCRAM verifier is computed here, so the password itself never reaches the server
                # (nor its log, should a statement fail)
                verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                            " PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier.decode()))
                )  # fmt: skip
                if not exists:
                    log(f"created database role {role}")
            roles = [sql.Identifier(database_role(s)) for s in sorted(self.credentials.database_roles)]
            database = sql.Identifier(DATABASE)
            # PUBLIC may connect and create temporary tables by default: only the services may now,
            # and only ingest (its staging table for replayed batches) creates temporary tables
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, sql.SQL(", ").join(roles)))
            if "ingest" in self.credentials.database_roles:
                conn.execute(
                    sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
                        database, sql.Identifier(database_role("ingest"))
                    )
                )
