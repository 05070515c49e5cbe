"""The notify service on the real PostgreSQL, delivering to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fleet_harness import wait_for
from notify_harness import (
    Inbox,
    free_port,
    html_rows,
    notify_service,
    notify_settings,
    rows,
    running,
    seed,
    smtp_server,
    truncate,
)

from kernel.endpoints import Endpoints
from subscriptions.outbox_store import queue_digest

pytestmark = pytest.mark.integration


@pytest.fixture
def smtp(endpoints: Endpoints) -> Iterator[tuple[Endpoints, Inbox, int]]:
    truncate(endpoints)
    with smtp_server() as (inbox, port):
        yield endpoints, inbox, port


def test_reminder_email_lists_every_device_in_its_table(smtp: tuple[Endpoints, Inbox, int]) -> None:
    endpoints, inbox, port = smtp
    seed(endpoints, 1, 3, timedelta(days=5, hours=1), locale="de-DE")
    with running(notify_service(endpoints, notify_settings(port))) as service:
        wait_for(lambda: inbox.count() >= 1 and service.stats.sent >= 2, 15, "reminder delivered")
    (msg,) = inbox.messages
    end = (datetime.now(UTC) + timedelta(days=5, hours=1)).strftime("%d.%m.%Y")
    assert html_rows(msg) == [[f"d-0-{n}", "Tracker 1 year", end, "5"] for n in range(3)]
    text = msg.get_body(preferencelist=("plain",))
    assert text is not None and f"d-0-2 | Tracker 1 year | {end} | 5 days left" in text.get_content()
    assert msg["To"] == "c0@example.org"
    items = rows(endpoints, "SELECT offset_days, i.channel, o.state FROM reminder_items i"
                            " JOIN outbox o ON o.id = i.outbox_id ORDER BY i.channel")  # fmt: skip
    assert items == [(5, "email", "sent"), (5, "sms", "sent")]
    # never twice: a second scheduler run (another process, after a restart) queues nothing
    again = notify_service(endpoints, notify_settings(port))
    try:
        assert again.run_scheduler(datetime.now(UTC)) == 0
    finally:
        again.close()


def test_a_renewal_before_sending_skips_the_reminder(smtp: tuple[Endpoints, Inbox, int]) -> None:
    endpoints, inbox, port = smtp
    (sub,) = seed(endpoints, 1, 2, timedelta(days=1, hours=1))
    service = notify_service(endpoints, notify_settings(port))
    try:
        assert service.run_scheduler(datetime.now(UTC)) == 2
        rows(endpoints, "UPDATE subscriptions SET period_end = period_end + interval '1 year', version = version + 1"
                        " WHERE id = %s RETURNING id", sub)  # fmt: skip
        service.deliver_due(threading.Event())
        assert service.run_scheduler(datetime.now(UTC)) == 0  # the new period's first reminder is a year away
    finally:
        service.close()
    assert inbox.count() == 0
    skipped = ("skipped", "renewed or ended before it was sent")
    assert rows(endpoints, "SELECT state, last_error FROM outbox") == [skipped] * 2
    assert rows(endpoints, "SELECT count(*) FROM reminder_items") == [(0,)]


def test_refused_mail_is_retried_then_failed_and_visible(smtp: tuple[Endpoints, Inbox, int]) -> None:
    endpoints, inbox, port = smtp
    seed(endpoints, 2, 1, timedelta(days=10, hours=1), phone=False)
    inbox.refuse = {"c0@example.org": "451 4.3.0 try again later", "c1@example.org": "550 5.1.1 no such user"}
    with running(notify_service(endpoints, notify_settings(port, max_attempts=2))) as service:
        wait_for(lambda: service.stats.failed >= 2, 15, "both failed")
    assert service.stats.retried == 1  # the 451 was tried again once; the 550 failed at once
    failed = dict(rows(endpoints, "SELECT recipient, attempts FROM outbox WHERE state = 'failed'"))
    assert failed == {"c0@example.org": 2, "c1@example.org": 1}
    errors = [e for (e,) in rows(endpoints, "SELECT last_error FROM outbox ORDER BY recipient")]
    assert "451" in errors[0] and "550" in errors[1]
    assert inbox.count() == 0


def test_two_senders_deliver_each_row_once(smtp: tuple[Endpoints, Inbox, int]) -> None:
    endpoints, inbox, port = smtp
    seed(endpoints, 150, 1, timedelta(days=15, hours=1), phone=False)
    first = notify_service(endpoints, notify_settings(port, batch=10))
    assert first.run_scheduler(datetime.now(UTC)) == 150
    first.close()
    second = notify_service(endpoints, notify_settings(port, batch=10))
    with running(first), running(second):
        wait_for(lambda: inbox.count() >= 150, 30, "150 mails")
    ids = Counter(m["Message-ID"] for m in inbox.messages)
    assert len(ids) == 150 and max(ids.values()) == 1
    assert first.stats.sent > 0 and second.stats.sent > 0
    assert rows(endpoints, "SELECT state, count(*) FROM outbox GROUP BY state") == [("sent", 150)]


KILL_WORKERS = 2


def _spawn(endpoints: Endpoints, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**endpoints.service_env("notify", os.environ), "FLEET_NOTIFY_SMTP_HOST": "127.0.0.1",
           "FLEET_NOTIFY_SMTP_PORT": str(port), "FLEET_NOTIFY_SEND_TIME": "00:00", "FLEET_NOTIFY_LEASE_S": "1",
           "FLEET_NOTIFY_BATCH": "20", "FLEET_NOTIFY_WORKERS": str(KILL_WORKERS)}  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fleet.cli", "notify", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def test_kill_9_mid_send_loses_nothing(smtp: tuple[Endpoints, Inbox, int], tmp_path: Path) -> None:
    """Killed while delivering 400 messages, restarted: every row is sent and nothing is lost. A mail
    arrives twice only if the kill fell between the server's 250 and the commit of `sent`: at most one
    per SMTP connection (the documented at-least-once window), and with the same Message-ID."""
    endpoints, inbox, port = smtp
    seed(endpoints, 400, 1, timedelta(days=15, hours=1), phone=False)
    proc = _spawn(endpoints, port, tmp_path / "notify.log")
    try:
        wait_for(lambda: inbox.count() >= 100, 60, "100 mails before the kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        in_flight = rows(endpoints, "SELECT count(*) FROM outbox WHERE state = 'sending'")[0][0]
        assert 0 < inbox.count() < 400, "killed mid-send"
        proc = _spawn(endpoints, port, tmp_path / "notify.log")
        wait_for(lambda: rows(endpoints, "SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0] == 400, 60,
                 "all 400 sent after the restart")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    ids = Counter(m["Message-ID"] for m in inbox.messages)
    expected = {f"c{c}@example.org" for c in range(400)}
    assert {m["To"] for m in inbox.messages} == expected, "lost"
    repeats = sum(n - 1 for n in ids.values())
    assert repeats <= min(KILL_WORKERS, in_flight), f"{repeats} repeated ({in_flight} claimed at the kill)"
    assert len(ids) == 400


def test_staff_digest_lists_locked_devices_and_failed_messages(smtp: tuple[Endpoints, Inbox, int]) -> None:
    endpoints, inbox, port = smtp
    (sub,) = seed(endpoints, 1, 1, timedelta(days=30))
    rows(endpoints, "INSERT INTO lockout_decisions (subscription_id, device_id, transition, desired, reason,"
                    " decided_at) VALUES (%s, 'd-0-0', 'lock:expired:x', 'lock', 'expired', now()) RETURNING id",
         sub)  # fmt: skip
    rows(endpoints, "INSERT INTO outbox (idempotency_key, kind, channel, recipient, body_text, state, attempts,"
                    " last_error, next_at, created_at) VALUES ('k1', 'reminder', 'email', 'gone@example.org', 'x',"
                    " 'failed', 8, 'SMTP 550: no such user', now(), now()) RETURNING id")  # fmt: skip
    settings = notify_settings(port, staff_email="staff@example.org", digest_time="00:00")
    with running(notify_service(endpoints, settings)) as service:
        wait_for(lambda: inbox.count() >= 1, 15, "digest delivered")
        assert service.stats.digests == 1
    (msg,) = inbox.messages
    assert msg["To"] == "staff@example.org"
    assert html_rows(msg)[0][0] == "d-0-0" and html_rows(msg)[0][2] == "expired"
    assert ["reminder", "email", "gone@example.org", "8", "SMTP 550: no such user"] in html_rows(msg)
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:  # once a day: a restart adds none
        assert not queue_digest(conn, "staff@example.org", datetime.now(UTC), datetime.now(UTC) - timedelta(days=1))
    assert rows(endpoints, "SELECT count(*) FROM outbox WHERE kind = 'digest'") == [(1,)]


def test_starttls_and_login_to_the_mail_server(endpoints: Endpoints, tmp_path: Path) -> None:
    """SMTP with STARTTLS required, a private CA and a login: the way a real mail relay is reached."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from localstack.tls import ensure, tls_files

    truncate(endpoints)
    files = tls_files(tmp_path)
    ensure(files, None, datetime.now(UTC))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.server_cert, files.server_key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"fleet", b"pw")
        if isinstance(data, LoginPassword):
            logins.append((data.login, data.password))
        return AuthResult(success=ok)

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True,
                            authenticator=authenticate, auth_require_tls=True)  # fmt: skip
    controller.start()
    try:
        seed(endpoints, 1, 2, timedelta(days=1, hours=1), phone=False)
        settings = notify_settings(port, smtp_security="starttls", smtp_ca_file=str(files.ca_cert),
                                   smtp_username="fleet", smtp_password="pw")  # fmt: skip
        with running(notify_service(endpoints, settings)):
            wait_for(lambda: inbox.count() >= 1, 15, "mail over STARTTLS")
    finally:
        controller.stop()
    assert logins == [(b"fleet", b"pw")]
    assert [row[0] for row in html_rows(inbox.messages[0])] == ["d-0-0", "d-0-1"]
