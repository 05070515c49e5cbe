"""The geofence core is pure: importing any of its modules pulls in no I/O library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("asyncio", "redis", "psycopg", "paho", "aiomqtt")
SHELL = {"service", "store"}  # the worker and its SQL: the package's imperative shell, which owns all I/O
MODULES = sorted(
    f"geofence.{p.stem}"
    for p in (Path(__file__).parents[3] / "geofence").glob("*.py")
    if p.stem != "__init__" and p.stem not in SHELL
)


def test_the_core_has_modules_to_check() -> None:
    assert {"geofence.index", "geofence.transitions", "geofence.trips", "geofence.utilization"} <= set(MODULES)
    assert {"geofence.tripcursor"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
