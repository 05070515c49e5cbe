"""What the three servers have in common: a folder of their own, a record of their process, a readiness check.

Subclasses say how to prepare their folder, which command runs them, which signal stops them cleanly
and how to tell that they answer; starting, waiting and stopping are the same for all three.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from kernel import secretfile
from localstack import procs
from localstack.errors import StackError
from localstack.install import Binaries
from localstack.model import StackSecrets, port_in_use

START_TIMEOUT_S = 60.0
Log = Callable[[str], None]


class Server(ABC):
    name: str  # "mqtt", "postgres" or "redis": the keys of Ports and of Stack.status()
    account: str  # the system user it runs as when started by root
    stop_signal: signal.Signals = signal.SIGTERM
    nofile: int | None = None  # open-files limit to ask for (None: inherit)
    nofile_needed = 0  # below this, warn

    def __init__(self, state_dir: Path, port: int, binaries: Binaries, credentials: StackSecrets) -> None:
        self.state_dir = state_dir
        self.port = port
        self.binaries = binaries
        self.credentials = credentials
        self.home = state_dir / self.folder
        self.record_path = state_dir / "run" / f"{self.name}.json"
        self.log_file = state_dir / "logs" / f"{self.name}.log"

    @property
    @abstractmethod
    def folder(self) -> str: ...

    @abstractmethod
    def prepare(self, log: Log) -> None:
        """Create the server's folder, data and configuration (keeping what an earlier run left)."""

    @abstractmethod
    def command(self) -> list[str]: ...

    @abstractmethod
    def answers(self) -> bool:
        """One real request to the server; False while it is still starting."""

    def after_start(self, log: Log) -> None:  # noqa: B027 - an optional hook, empty by default
        """One-time work that needs the running server (e.g. creating the database)."""

    def provision(self, log: Log) -> None:  # noqa: B027 - an optional hook, empty by default
        """Work done on every `up()`, whether the server was running or not (e.g. service accounts
        kept in step with the credentials file)."""

    # ------------------------------------------------------------ shared behaviour

    def record(self) -> procs.ProcessRecord | None:
        found = procs.ProcessRecord.load(self.record_path)
        return found if procs.is_running(found) else None

    def start(self, log: Log) -> procs.ProcessRecord:
        """Start unless running; wait until it answers. Refuses a port held by something else."""
        running = self.record()
        if running is not None:
            if running.port != self.port:
                raise StackError(
                    f"{self.name} from {self.state_dir} already runs on port {running.port}, not {self.port}; "
                    "run `fleet stack down` first to change ports"
                )
            self._wait_ready(running)
            self.provision(log)
            return running
        if port_in_use(self.port):
            raise StackError(
                f"127.0.0.1:{self.port} is taken by another program, so {self.name} cannot listen there; "
                f"stop that program or choose another {self.name} port"
            )
        self.prepare(log)
        log(f"starting {self.name} on 127.0.0.1:{self.port} (log: {self.log_file})")
        started = procs.spawn(
            self.command(),
            cwd=self.home,
            log_file=self.log_file,
            account=self.account,
            port=self.port,
            nofile=self.nofile,
        )
        started.save(self.record_path)
        self._check_open_files(started, log)
        self._wait_ready(started)
        self.after_start(log)
        self.provision(log)
        return started

    def _check_open_files(self, started: procs.ProcessRecord, log: Log) -> None:
        """Say so when the open-files limit caps the number of connections below what a fleet needs."""
        limit = procs.nofile_limit(started.pid) if self.nofile else None
        if limit is not None and limit < self.nofile_needed:
            log(
                f"{self.name} may open only {limit} files, so it can hold about {limit - 100} connections; "
                f"raise the hard limit (ulimit -Hn, or run as root) to {self.nofile} for more"
            )

    def _wait_ready(self, record: procs.ProcessRecord) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if procs.exited_early(record):
                raise StackError(f"{self.name} exited while starting; last lines of {self.log_file}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} did not answer on port {self.port} within {START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_file}:\n{self.tail()}"
                )
            time.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        try:
            return "".join(self.log_file.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return "(no log yet)"

    def own_folder(self, path: Path, mode: int = 0o700) -> None:
        """Create `path` owned by the server's account (when root) so the dropped-privilege server can write."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.account)
            if path.stat().st_uid != entry.pw_uid:
                for root, dirs, files in os.walk(path):
                    for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        os.chown(name, entry.pw_uid, entry.pw_gid)
        path.chmod(mode)

    def write_private(self, path: Path, text: str) -> None:
        """Write a file only the server's account can read (it may hold a password), private from the start."""
        owner = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.account)
            owner = (entry.pw_uid, entry.pw_gid)
        secretfile.write_private(path, text, owner=owner)
