"""The notify service (`fleet notify serve`): queues reminders on time and delivers the outbox.

One loop, three duties:
- the reminder scheduler runs at the next due moment (`reminders.next_due`), and at least every
  `RESCHEDULE_S` so that renewals and new subscriptions are seen without a signal from their writers;
- the staff digest is queued once a day at `digest_time` UTC;
- due outbox rows (from this service, the lockout engine, the webhooks) are claimed with
  FOR UPDATE SKIP LOCKED under a lease and delivered; a NOTIFY on `fleet_outbox` wakes it at once.

Between two claims it sleeps until the earliest of those moments; it does not poll faster.

Delivery window (docs/subscriptions.md "Sender"): a row is committed `sending` before it is handed to
the mail server and `sent` right after the server's 250. A crash before the handover resends it when
the lease ends (nothing lost); a crash in the milliseconds between the 250 and the commit sends it
again (at least once), with the same Message-ID so a receiver can tell.
"""

from __future__ import annotations

import logging
import select
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import psycopg

from kernel.ratelimit import RateLimitedLog
from subscriptions import outbox_store, schedule_store
from subscriptions.channels import DeliveryError, EmailSender, SmsGateway, sms_gateway
from subscriptions.outbox_store import OutboxRow
from subscriptions.settings import NotifySettings

log = logging.getLogger(__name__)

RESCHEDULE_S = 60.0  # longest time before subscription changes are looked at again
MAX_WAIT_S = 30.0  # longest sleep (a missed NOTIFY costs at most this)
RETRY_S = 2.0  # after a refused database call


@dataclass(slots=True)
class NotifyStats:
    queued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    digests: int = 0


def backoff(attempts: int, first_s: float, max_s: float) -> timedelta:
    """first, 2×first, 4×first, ... capped: 8 tries span about 2 hours with the defaults' cap of 6 h."""
    return timedelta(seconds=min(max_s, first_s * 2 ** max(0, attempts - 1)))


class NotifyService:
    def __init__(self, database_url: str, settings: NotifySettings, *, sms: SmsGateway | None = None) -> None:
        self.settings = settings
        self._database_url = database_url
        self._senders = [EmailSender(settings) for _ in range(settings.workers)]
        self._pool: ThreadPoolExecutor | None = None  # made on first use, shut down by close()
        self._counting = threading.Lock()
        self.sms = sms or sms_gateway(settings)
        self.stats = NotifyStats()
        self._warn = RateLimitedLog(log)
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None
        self._workers_db: dict[int, psycopg.Connection] = {}
        self._next_schedule = datetime.min.replace(tzinfo=UTC)
        self._next_digest = _next_daily(datetime.now(UTC), settings.digest_time, today=True)
        self._ready = threading.Event()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        """Close the mail and database connections (`run` does this itself when it stops)."""
        for sender in self._senders:
            sender.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._close_db()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self._round(stop)
                except psycopg.Error as exc:
                    self._warn.warning("db", "notify: database refused a round, retrying: %s", exc)
                    self._close_db()
                    stop.wait(RETRY_S)
        finally:
            self.close()

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._database_url, autocommit=True, application_name="fleet notify")
            self._listen = psycopg.connect(self._database_url, autocommit=True, application_name="fleet notify")
            self._listen.execute(f"LISTEN {schedule_store.OUTBOX_CHANNEL}")
        return self._conn

    def _worker_db(self, index: int) -> psycopg.Connection:
        conn = self._workers_db.get(index)
        if conn is None or conn.closed:
            conn = self._workers_db[index] = psycopg.connect(
                self._database_url, autocommit=True, application_name=f"fleet notify {index}"
            )
        return conn

    def _close_db(self) -> None:
        for conn in (self._conn, self._listen, *self._workers_db.values()):
            if conn is not None:
                conn.close()
        self._conn = self._listen = None
        self._workers_db = {}

    def _round(self, stop: threading.Event) -> None:
        conn = self._db()
        now = datetime.now(UTC)
        if now >= self._next_schedule:
            self.run_scheduler(now)
        if self.settings.staff_email and now >= self._next_digest:
            if outbox_store.queue_digest(conn, self.settings.staff_email, now, now - timedelta(days=1)):
                self.stats.digests += 1
            self._next_digest = _next_daily(now, self.settings.digest_time)
        self._ready.set()
        if self.deliver_due(stop) >= self.settings.batch:
            return  # more may be waiting: claim again at once
        self._sleep(stop)

    def run_scheduler(self, now: datetime) -> int:
        queued, nxt = schedule_store.queue_due(self._db(), now, self.settings.offsets, self.settings.send_time)
        self.stats.queued += queued
        if queued:
            log.info("notify: %d messages queued", queued)
        soon = now + timedelta(seconds=RESCHEDULE_S)
        self._next_schedule = min(nxt, soon) if nxt else soon
        return queued

    def deliver_due(self, stop: threading.Event | None = None) -> int:
        """Claim one batch of due rows and deliver it over `workers` SMTP connections at once;
        returns how many were claimed."""
        conn = self._db()
        lease = timedelta(seconds=self.settings.lease_s)
        rows = outbox_store.claim(conn, datetime.now(UTC), self.settings.batch, lease)
        checked = [r.id for r in rows if r.kind in ("reminder", "overdue")]
        why = outbox_store.stale(conn, checked) if checked else {}
        for row_id, reason in why.items():
            outbox_store.skip(conn, row_id, reason)
            self.stats.skipped += 1
            self._next_schedule = datetime.now(UTC)  # its still-valid items are queued again at once
        todo = [r for r in rows if r.id not in why]
        if len(todo) <= 1 or len(self._senders) == 1:
            self._deliver_all(conn, todo, self._senders[0], stop)
        else:
            # Each worker its own SMTP and database connection: the row is marked sent the moment the
            # server accepted it, without waiting for another worker's statement.
            n = len(self._senders)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(n, thread_name_prefix="notify-send")
            jobs = [self._pool.submit(self._deliver_all, self._worker_db(i), todo[i::n], self._senders[i], stop)
                    for i in range(n)]  # fmt: skip
            for job in jobs:
                job.result()
        return len(rows)

    def _deliver_all(
        self, conn: psycopg.Connection, rows: list[OutboxRow], email: EmailSender, stop: threading.Event | None
    ) -> None:
        for i, row in enumerate(rows):
            if stop is not None and stop.is_set():
                outbox_store.release(conn, [r.id for r in rows[i:]])  # back to the queue at once
                return
            self._deliver(conn, row, email)

    def _deliver(self, conn: psycopg.Connection, row: OutboxRow, email: EmailSender) -> None:
        try:
            if row.channel == "email":
                email.send(row)
            else:
                self.sms.send(row.recipient, row.body_text, row.idempotency_key)
        except DeliveryError as exc:
            now = datetime.now(UTC)
            if exc.permanent or row.attempts >= self.settings.max_attempts:
                outbox_store.mark_failed(conn, row.id, str(exc), now)
                self._count("failed")
                self._warn.warning("failed", "notify: %s %s to %s failed for good: %s", row.kind, row.channel,
                                   row.recipient, exc)  # fmt: skip
            else:
                at = now + backoff(row.attempts, self.settings.backoff_s, self.settings.max_backoff_s)
                outbox_store.mark_retry(conn, row.id, str(exc), at)
                self._count("retried")
            return
        outbox_store.mark_sent(conn, row.id, datetime.now(UTC))
        self._count("sent")

    def _count(self, name: str) -> None:
        with self._counting:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _sleep(self, stop: threading.Event) -> None:
        conn = self._db()
        now = datetime.now(UTC)
        row = conn.execute("SELECT min(next_at) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()
        moments = [self._next_schedule, now + timedelta(seconds=MAX_WAIT_S)]
        if row and row[0] is not None:
            moments.append(row[0])
        if self.settings.staff_email:
            moments.append(self._next_digest)
        wait = max(0.0, (min(moments) - now).total_seconds())
        self._wait_notify(stop, wait)

    def _wait_notify(self, stop: threading.Event, wait: float) -> None:
        """Sleep up to `wait` seconds, in slices short enough to see `stop`, or until a NOTIFY."""
        listen = self._listen
        deadline = datetime.now(UTC) + timedelta(seconds=wait)
        while not stop.is_set() and listen is not None:
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                return
            ready, _, _ = select.select([listen.fileno()], [], [], min(left, 0.5))
            if ready and any(True for _ in listen.notifies(timeout=0)):
                return


def _next_daily(now: datetime, at: time, *, today: bool = False) -> datetime:
    """The next `at` (a UTC time of day) after `now`; with `today`, today's even if it passed."""
    moment = datetime.combine(now.date(), at, UTC)
    if today:
        return moment
    return moment if moment > now else moment + timedelta(days=1)


def run_notify(database_url: str, settings: NotifySettings) -> None:
    from kernel.process import stop_on_signals

    stop = stop_on_signals()
    NotifyService(database_url, settings).run(stop)
