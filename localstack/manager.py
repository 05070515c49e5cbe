"""`Stack`: the three local servers as one thing that can be brought up, asked about and brought down.

The servers are children of whoever calls `up()`, each in its own session, so they outlive a
`fleet stack up` process; `down()` (from any process) finds them again through `run/*.json`.
Everything lives under the state folder, which is reused on the next `up()`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localstack import procs, tls
from localstack.errors import StackError
from localstack.install import Binaries, find_binaries
from localstack.model import Ports, StackSecrets, StackUrls
from localstack.mosquitto import Mosquitto
from localstack.postgres import Postgres
from localstack.redis_server import Redis
from localstack.server import Server
from provisioning import dynsec
from provisioning.credentials import DeviceCredentials

Log = Callable[[str], None]
SERVER_TYPES: tuple[type[Server], ...] = (Postgres, Redis, Mosquitto)

_logger = logging.getLogger("localstack")


@dataclass(frozen=True, slots=True)
class ServerStatus:
    name: str
    running: bool
    pid: int | None
    port: int


class Stack:
    def __init__(
        self, state_dir: Path, ports: Ports = Ports(), log: Log | None = None, *, mqtt_plain: bool = True
    ) -> None:
        """`mqtt_plain=False` turns the broker's plain listener off; its TLS listener is always on."""
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.ports = ports
        self.log: Log = log or _logger.info
        self.mqtt_plain = mqtt_plain

    @property
    def ca_file(self) -> Path:
        """The stack's CA certificate: what clients of the TLS listener trust."""
        return tls.tls_files(self.state_dir).ca_cert

    def mqtts(self, url: str) -> str:
        """The same account's URL on the TLS listener, naming the stack's CA."""
        return tls.mqtts_url(url, self.ports.mqtts, self.ca_file)

    def _server(self, kind: type[Server], binaries: Binaries, credentials: StackSecrets) -> Server:
        if kind is Mosquitto:
            return Mosquitto(self.state_dir, self.ports.mqtt, binaries, credentials, tls_port=self.ports.mqtts,
                             plain=self.mqtt_plain)  # fmt: skip
        return kind(self.state_dir, self._port(kind.name), binaries, credentials)

    def _urls(self, credentials: StackSecrets) -> StackUrls:
        urls = credentials.urls(self.ports)
        return urls if self.mqtt_plain else tls.mqtts_urls(urls, self.ports.mqtts, self.ca_file)

    # ------------------------------------------------------------ paths

    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "credentials.json"

    def _record_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.json"

    def _port(self, name: str) -> int:
        return int(getattr(self.ports, name))

    # ------------------------------------------------------------ public interface

    def up(self) -> StackUrls:
        """Start whatever is not running, wait until each server answers, return the URLs (idempotent)."""
        binaries = find_binaries()
        with _permission_errors(self.state_dir):
            self._prepare_state_dir()
        with self._lock():
            credentials = StackSecrets.load_or_create(self.credentials_file)
            started: list[Server] = []
            try:
                for kind in SERVER_TYPES:
                    server = self._server(kind, binaries, credentials)
                    was_running = server.record() is not None
                    server.start(self.log)
                    if not was_running:
                        started.append(server)
            except BaseException:
                for server in reversed(started):
                    self._stop(server.name, server.stop_signal)
                raise
        return self._urls(credentials)

    def down(self) -> None:
        """Stop all three servers and wait until their processes are gone."""
        if not self.state_dir.exists():
            return
        with self._lock():
            for kind in reversed(SERVER_TYPES):
                self._stop(kind.name, kind.stop_signal)

    def status(self) -> dict[str, ServerStatus]:
        result = {}
        for kind in SERVER_TYPES:
            record = procs.ProcessRecord.load(self._record_path(kind.name))
            running = procs.is_running(record)
            result[kind.name] = ServerStatus(
                name=kind.name,
                running=running,
                pid=record.pid if running and record else None,
                port=record.port if running and record else self._port(kind.name),
            )
        return result

    def urls(self) -> StackUrls:
        if not self.credentials_file.exists():
            raise StackError(f"no local stack in {self.state_dir} yet; run `fleet stack up` first")
        credentials = StackSecrets.load(self.credentials_file)
        if not credentials.complete:
            raise StackError(
                f"the services' accounts are missing from {self.credentials_file} (made by an older version); "
                "run `fleet stack down` and `fleet stack up` to create them"
            )
        return self._urls(credentials)

    def register_devices(self, devices: Iterable[DeviceCredentials]) -> int:
        """Register (or re-key) thousands of devices at once by writing the broker's account file directly.

        The broker is stopped for the write and started again if it was running (about a second;
        connected clients reconnect and persistent sessions are kept). For a handful of devices, or
        without downtime, use `provisioning.broker_admin.BrokerAdmin` instead.
        """
        binaries = find_binaries()
        self._prepare_state_dir()
        with self._lock():
            credentials = StackSecrets.load_or_create(self.credentials_file)
            broker = self._server(Mosquitto, binaries, credentials)
            assert isinstance(broker, Mosquitto)
            was_running = broker.record() is not None
            if was_running:
                self._stop(broker.name, broker.stop_signal)
            try:
                broker.prepare(self.log)
                config = json.loads(Path(broker.dynsec_file).read_text())
                try:
                    merged, added = dynsec.with_devices(config, devices, lambda: os.urandom(dynsec.SALT_BYTES))
                except ValueError as exc:
                    raise StackError(str(exc)) from None
                broker.write_private(Path(broker.dynsec_file), json.dumps(merged, indent=1))
                self.log(f"registered {added} devices at the broker")
            finally:
                if was_running:
                    broker.start(self.log)
        return added

    def pids(self) -> dict[str, int]:
        """Pids of the running servers' main processes (tests use this to check nothing is left behind)."""
        return {name: s.pid for name, s in self.status().items() if s.pid is not None}

    # ------------------------------------------------------------ internals

    def _stop(self, name: str, sig: signal.Signals) -> None:
        path = self._record_path(name)
        record = procs.ProcessRecord.load(path)
        if procs.is_running(record) and record is not None:
            self.log(f"stopping {name} (pid {record.pid})")
            if not procs.stop(record, sig):
                self.log(f"{name} did not stop within {procs.STOP_TIMEOUT_S:.0f} s and was killed")
        path.unlink(missing_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time per state folder (two test workers, or a CLI next to the demo)."""
        run = self.state_dir / "run"
        with _permission_errors(self.state_dir):
            run.mkdir(parents=True, exist_ok=True)
            handle = (run / "lock").open("a")
        with handle, _permission_errors(self.state_dir):
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "logs"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # the servers run as their own system users and must be able to walk down to their folders
            self.state_dir.chmod(0o711)
            for folder in self.state_dir.parents:
                mode = folder.stat().st_mode
                if not mode & stat.S_IXOTH:
                    self.log(f"allowing other users to traverse {folder} (o+x) so the servers reach {self.state_dir}")
                    folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@contextmanager
def _permission_errors(state_dir: Path) -> Iterator[None]:
    try:
        yield
    except PermissionError as exc:
        raise StackError(
            f"no permission for {exc.filename or state_dir}: the state folder {state_dir} belongs to another "
            "user (was it created by root?); use that user, or another folder (FLEET_STATE_DIR)"
        ) from None
