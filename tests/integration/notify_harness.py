"""A real SMTP server (aiosmtpd) on a free loopback port, and subscriptions seeded straight into the database."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

import psycopg
from aiosmtpd.controller import Controller

from kernel.endpoints import Endpoints
from subscriptions.sender import NotifyService
from subscriptions.settings import NotifySettings

SUBSCRIPTION_TABLES = "reminder_items, outbox, lockout_decisions, webhook_events, subscription_devices, exemptions, " \
    "subscriptions, customers, plans"  # fmt: skip


@dataclass
class Inbox:
    """What the SMTP server accepted, in order; `refuse` maps a recipient to an SMTP reply to give instead."""

    messages: list[EmailMessage] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append(msg)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def notify_settings(port: int, **kw: Any) -> NotifySettings:
    """Reminders due from midnight (so a test at any hour sees today's offset), fast retries."""
    values: dict[str, Any] = {"smtp_host": "127.0.0.1", "smtp_port": port, "send_time": time(0, 0),
                              "backoff_s": 0.2, "lease_s": 2.0, "max_attempts": 3, **kw}  # fmt: skip
    return NotifySettings(**values)


def notify_service(endpoints: Endpoints, settings: NotifySettings) -> NotifyService:
    return NotifyService(endpoints.for_service("notify").database_url, settings)


@contextmanager
def running(service: NotifyService) -> Iterator[NotifyService]:
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="notify-test")
    thread.start()
    try:
        assert service.wait_ready(15), "the notify service did not start"
        yield service
    finally:
        stop.set()
        thread.join(15)


def truncate(endpoints: Endpoints) -> None:
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {SUBSCRIPTION_TABLES}")


def seed(
    endpoints: Endpoints, customers: int, devices_per_customer: int, ends_in: timedelta, *,
    locale: str = "en", phone: bool = True, payment_state: str = "paid", payment_due: datetime | None = None,
) -> list[uuid.UUID]:  # fmt: skip
    """Customers with one subscription each (plan tracker-1y) carrying devices `d-<customer>-<n>`."""
    now = datetime.now(UTC)
    end = now + ends_in
    with psycopg.connect(endpoints.database_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO plans (id, name, period_months, price_cents, created_at)"
                    " VALUES ('tracker-1y', 'Tracker 1 year', 12, 4900, now()) ON CONFLICT DO NOTHING")  # fmt: skip
        subs = []
        for c in range(customers):
            cid, sid = uuid.uuid4(), uuid.uuid4()
            cur.execute(
                "INSERT INTO customers (id, name, email, phone, locale, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, now(), now())",
                (cid, f"Customer {c}", f"c{c}@example.org", f"+491510{c:06d}" if phone else None, locale),
            )
            cur.execute(
                "INSERT INTO subscriptions (id, customer_id, plan_id, status, payment_state, period_start, period_end,"
                " payment_due, created_at, updated_at) VALUES (%s, %s, 'tracker-1y', 'active', %s, %s, %s, %s, now(),"
                " now())",
                (sid, cid, payment_state, end - timedelta(days=365), end, payment_due),
            )
            cur.executemany(
                "INSERT INTO subscription_devices (subscription_id, device_id, assigned_at) VALUES (%s, %s, now())",
                [(sid, f"d-{c}-{n}") for n in range(devices_per_customer)],
            )
            subs.append(sid)
    return subs


def rows(endpoints: Endpoints, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(endpoints.database_url) as conn:
        return conn.execute(sql, params).fetchall()


class TableRows(HTMLParser):
    """The cells of every <tr> in <tbody>, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_body = self._in_cell = False

    def handle_starttag(self, tag: str, attrs: Sequence[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def html_rows(msg: EmailMessage) -> list[list[str]]:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None, "no HTML part"
    parser = TableRows()
    parser.feed(part.get_content())
    return parser.rows
