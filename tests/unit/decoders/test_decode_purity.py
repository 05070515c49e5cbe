"""The decoders are the functional core: importing them must not pull in a transport, a database
driver or an event loop (checked in a fresh interpreter, since this one has them all loaded)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["asyncio", "aiomqtt", "paho", "psycopg", "redis", "socket"]


def test_decoders_import_no_io_library() -> None:
    code = f"import sys, gateway.decoders\nbad = [m for m in {FORBIDDEN!r} if m in sys.modules]\nprint(','.join(bad))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"gateway.decoders imports {out.stdout.strip()}"
