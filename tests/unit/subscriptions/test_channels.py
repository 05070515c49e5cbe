"""The generic JSON SMS gateway against a real local HTTP server, and the webhook secret file."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from subscriptions.channels import DeliveryError, JsonPostSms
from subscriptions.settings import WebhookSettings


class _Gateway(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[tuple[dict[str, Any], str | None, str | None]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((body, self.headers.get("Authorization"), self.headers.get("Idempotency-Key")))
        self.send_response(self.answers.pop(0))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/sms"
    finally:
        server.shutdown()
        server.server_close()


def test_json_gateway_posts_and_classifies_failures(gateway: str) -> None:
    _Gateway.answers, _Gateway.seen = [200, 400, 503, 429], []
    sms = JsonPostSms(gateway, "tok", timeout_s=5)
    sms.send("+4915112345678", "Hello", "k1")
    assert _Gateway.seen == [({"to": "+4915112345678", "text": "Hello", "idempotency_key": "k1"}, "Bearer tok", "k1")]
    with pytest.raises(DeliveryError) as refused:
        sms.send("+4915112345678", "Hello", "k2")
    assert refused.value.permanent
    for _ in range(2):  # 503 and 429: try again later
        with pytest.raises(DeliveryError) as later:
            sms.send("+4915112345678", "Hello", "k3")
        assert not later.value.permanent


def test_unreachable_gateway_is_retried() -> None:
    with pytest.raises(DeliveryError) as exc:
        JsonPostSms("http://127.0.0.1:1/sms", None, timeout_s=2).send("+4915112345678", "x", "k")
    assert not exc.value.permanent


def test_webhook_secret_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret\n")
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        WebhookSettings(secret_file=path).shared_secret()
    path.chmod(0o600)
    assert WebhookSettings(secret_file=path).shared_secret() == b"s3cret"
    assert "s3cret" not in repr(WebhookSettings(secret="s3cret"))
