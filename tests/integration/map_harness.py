"""The operator API served over a real socket (uvicorn in a thread), for WebSocket clients and the
browser: the TestClient has no port a browser could open, and its WebSocket reads have no timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_app
from api.deps import ApiConfig

WS = "websockets-sansio"  # as `fleet api` serves it (uvicorn's default picks websockets' deprecated legacy API)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_api(config: ApiConfig, start_timeout_s: float = 15.0) -> Iterator[str]:
    """`http://127.0.0.1:PORT` while the block runs; the server is stopped and joined after it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", ws=WS, ws_per_message_deflate=False))  # fmt: skip
    thread = threading.Thread(target=server.run, name="api-server")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=10)
            raise AssertionError("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
