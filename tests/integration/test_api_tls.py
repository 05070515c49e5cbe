"""`fleet api --tls-cert --tls-key` serves HTTPS that a client verifying the certificate accepts,
with keys required exactly as over plain HTTP."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_harness import api_key

from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, context: ssl.SSLContext, path: str, headers: dict[str, str]) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def _plain_get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_api_serves_https(endpoints: Endpoints, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    env = {**os.environ, **endpoints.env(), "FLEET_STATE_DIR": str(tmp_path)}
    args = [
        sys.executable,
        "-m",
        "fleet.cli",
        "api",
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _get(port, context, "/healthz", {}) == 200
                break
            except (ConnectionError, OSError):
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "the API did not come up over HTTPS"
                time.sleep(0.2)
        assert _get(port, context, "/v1/zones", {}) == 401
        assert _get(port, context, "/v1/zones", {"X-API-Key": api_key(endpoints)}) == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(port, ssl.create_default_context(), "/healthz", {})  # not trusted without the CA
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            _plain_get(port)
    finally:
        server.terminate()
        server.wait(10)
        if server.stderr:
            server.stderr.close()
