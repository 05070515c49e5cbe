"""The local server stack: Mosquitto 2, PostgreSQL 15 + TimescaleDB and Redis 7 as child processes.

`ensure_installed()` finds or installs the programs (building TimescaleDB); `Stack(state_dir).up()`
starts them on loopback ports with their data under `state_dir` and returns the URLs the services use.
See docs/stack.md.
"""

from gateway.stack.errors import StackError
from gateway.stack.install import Binaries, ensure_installed, find_binaries
from gateway.stack.manager import ServerStatus, Stack
from gateway.stack.model import Credentials, DeviceCredentials, Ports, StackUrls, free_ports

__all__ = [
    "Binaries",
    "Credentials",
    "DeviceCredentials",
    "Ports",
    "ServerStatus",
    "Stack",
    "StackError",
    "StackUrls",
    "ensure_installed",
    "find_binaries",
    "free_ports",
]
