"""The command core is pure: importing it pulls in no I/O library."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("asyncio", "redis", "psycopg", "paho", "aiomqtt")


@pytest.mark.parametrize(
    "module", ["commands.model", "commands.lifecycle", "commands.wire", "commands.fleetview", "commands.theft"]
)
def test_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
