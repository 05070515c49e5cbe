"""The local server stack: Mosquitto 2, PostgreSQL 15 + TimescaleDB and Redis 7 as child processes.

`ensure_installed()` finds or installs the programs (building TimescaleDB); `Stack(state_dir).up()`
starts them on loopback ports with their data under `state_dir` and returns the URLs the services use.
See docs/stack.md.
"""

from localstack.errors import StackError
from localstack.install import Binaries, ensure_installed, find_binaries
from localstack.manager import ServerStatus, Stack
from localstack.model import Ports, StackSecrets, StackUrls, free_ports
from provisioning.credentials import DeviceCredentials

__all__ = [
    "Binaries",
    "DeviceCredentials",
    "Ports",
    "ServerStatus",
    "Stack",
    "StackError",
    "StackSecrets",
    "StackUrls",
    "ensure_installed",
    "find_binaries",
    "free_ports",
]
