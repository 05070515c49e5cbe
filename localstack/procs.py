"""Starting, finding and stopping the server processes (Linux: reads /proc).

Each server runs in its own session (so Ctrl-C in a terminal does not reach it and it outlives the
`fleet stack up` process) and is recorded in `run/<name>.json` with its pid *and* its kernel start
time, so a recycled pid is never mistaken for our server.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from localstack.errors import StackError

STOP_TIMEOUT_S = 30.0
POLL_S = 0.05

# Popen objects of servers this process started: kept so they are reaped (no zombies) and never
# garbage-collected while running (which would warn).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    pid: int
    start_time: int
    port: int

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat, or None when there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def is_running(record: ProcessRecord | None) -> bool:
    if record is None:
        return False
    stat = _stat(record.pid)
    if stat is None or stat[1] != record.start_time:
        return False
    if stat[0] in ("Z", "X"):
        _reap(record.pid)
        return False
    return True


def run_as_kwargs(account: str | None) -> dict[str, object]:
    """Popen arguments that drop root to `account`; nothing when not root (everything runs as the caller)."""
    if account is None or os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        raise StackError(f"user {account!r} does not exist; is its Debian package installed?") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn(
    cmd: Sequence[str],
    *,
    cwd: Path,
    log_file: Path,
    account: str | None,
    port: int,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> ProcessRecord:
    """Start one server in its own session with output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out, _raised_nofile(nofile):
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                **run_as_kwargs(account),  # type: ignore[arg-type]
            )
        except OSError as exc:
            raise StackError(f"cannot start {cmd[0]}: {exc}") from None
    _CHILDREN[proc.pid] = proc
    stat = _stat(proc.pid)
    return ProcessRecord(pid=proc.pid, start_time=stat[1] if stat else 0, port=port)


class _raised_nofile:
    """Raise RLIMIT_NOFILE around a spawn so the child inherits it; the caller's limit is restored."""

    def __init__(self, wanted: int | None) -> None:
        self.wanted = wanted
        self.saved: tuple[int, int] | None = None

    def __enter__(self) -> None:
        if self.wanted is None:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.saved = (soft, hard)
        # raising the hard limit needs CAP_SYS_RESOURCE (root outside most containers); else take the hard limit
        for limits in ((max(soft, self.wanted), max(hard, self.wanted)), (max(soft, min(self.wanted, hard)), hard)):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)
                return
            except (ValueError, OSError):
                continue
        self.saved = None

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)


def nofile_limit(pid: int) -> int | None:
    """The soft open-files limit of a running process (to report how many connections it can hold)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def exited_early(record: ProcessRecord) -> bool:
    """True when a server we just started has already died (its log says why)."""
    proc = _CHILDREN.get(record.pid)
    if proc is not None:
        return proc.poll() is not None
    return not is_running(record)


def stop(record: ProcessRecord, sig: signal.Signals, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Signal the server, wait until it is gone; SIGKILL its whole session after `timeout_s`.

    Returns False when it had to be killed.
    """
    if not is_running(record):
        _reap(record.pid)
        return True
    _signal(record.pid, sig)
    if wait_gone(record, timeout_s):
        return True
    for pid in [record.pid, *descendants(record.pid)]:
        _signal(pid, signal.SIGKILL)
    wait_gone(record, 5.0)
    return False


def wait_gone(record: ProcessRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not is_running(record):
            return True
        time.sleep(POLL_S)
    return not is_running(record)


def descendants(pid: int) -> list[int]:
    """Pids of `pid`'s children, grandchildren and so on (PostgreSQL's workers leave its session)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(raw[raw.rfind(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise StackError(f"not allowed to stop pid {pid}; run `fleet stack down` as its owner or root") from None


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
