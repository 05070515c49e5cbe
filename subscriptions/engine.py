"""The lockout engine (`fleet lockout`): keeps every subscription's devices as the policy wants them.

It acts at once and on time, without polling: every change of a subscription sends a PostgreSQL
NOTIFY on `fleet_subscriptions` in the changing transaction (subscriptions/store.py; migration 0009
adds one for notices marked sent), and the engine keeps a heap of each subscription's next change
(`policy.decide(...).next_change`), sleeping exactly until the earliest. NOTIFY rather than Redis
pub/sub because it is sent only when the change commits and needs no Redis client in the code that
changes subscriptions (the API, the CLI, the importer, the webhooks); Redis still carries the
command service's wake-ups.

On start, and after the listening connection is lost, it evaluates every subscription: whatever came
due while it was down is decided then. Decisions are idempotent per device chain (lockout_store.py),
so a restart, a kill -9 mid-transaction or a second engine repeats nothing.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
import redis

from commands.model import Action, Rules
from kernel.ratelimit import RateLimitedLog
from kernel.settings import DURABLE_COMMIT
from subscriptions import lockout_store as ls
from subscriptions.model import Channel, Customer
from subscriptions.policy import Desired, DeviceView, Outcome, PolicySettings, decide
from subscriptions.store import CHANNEL

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.5  # longest sleep between looks at the stop flag
RETRY_S = 1.0
BATCH = 2000  # subscriptions evaluated per transaction
COLLECT_S = 0.01  # after the first notification, how long to gather more into the same round
# A lock or unlock whose command ended so (the device stayed offline, or never answered, for the
# command's time to live) is issued again; one canceled or superseded by a person is left as it is.
RETRY_STATES = frozenset({"expired", "failed"})
WATCHED_STATES = frozenset({"queued", "waiting_for_park", "sent", "delivered"})
COMMAND_LOOK_S = timedelta(seconds=5)
COMMAND_RETRY_S = timedelta(seconds=60)


@dataclass(slots=True)
class EngineStats:
    evaluated: int = 0
    locks: int = 0
    unlocks: int = 0
    held: int = 0
    notices: int = 0
    rounds: int = 0


class LockoutEngine:
    def __init__(self, database_url: str, redis_url: str, *, policy: PolicySettings | None = None,
                 rules: Rules | None = None) -> None:  # fmt: skip
        self.policy = policy or PolicySettings()
        self.rules = rules or Rules()
        self._database_url = database_url
        self._redis_url = redis_url
        self.stats = EngineStats()
        self._heap: list[tuple[datetime, UUID]] = []
        self._next: dict[UUID, datetime] = {}
        self._ready = threading.Event()
        self._warn = RateLimitedLog(log)
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None

    def wait_ready(self, timeout: float) -> bool:
        """True once the engine listens and has caught up with everything due."""
        return self._ready.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        self._redis = redis.Redis.from_url(self._redis_url)
        try:
            while not stop.is_set():
                try:
                    self._connect()
                    self._catch_up()
                    self._ready.set()
                    while not stop.is_set():
                        self._round()
                except (psycopg.Error, redis.RedisError) as exc:
                    self._warn.warning("round", "lockout: store refused, reconnecting: %s", exc)
                    self._close()
                    stop.wait(RETRY_S)
        finally:
            self._close()
            self._redis.close()

    def _connect(self) -> None:
        self._close()
        self._listen = psycopg.connect(self._database_url, autocommit=True)
        self._listen.execute(f"LISTEN {CHANNEL}")
        self._conn = psycopg.connect(self._database_url, autocommit=True, options=DURABLE_COMMIT)

    def _close(self) -> None:
        for conn in (self._listen, self._conn):
            if conn is not None and not conn.closed:
                conn.close()
        self._listen = self._conn = None

    def _catch_up(self) -> None:
        assert self._conn is not None
        self._heap.clear()
        self._next.clear()
        ids = ls.all_ids(self._conn)
        for start in range(0, len(ids), BATCH):
            self.evaluate(ids[start : start + BATCH], _now())
        log.info("lockout: %d subscriptions evaluated on start, %d timers", len(ids), len(self._next))

    def _round(self) -> None:
        assert self._listen is not None
        wait = MAX_WAIT_S
        if self._heap:
            wait = max(0.0, min(MAX_WAIT_S, (self._heap[0][0] - _now()).total_seconds()))
        woken: set[str] = set()
        for note in self._listen.notifies(timeout=wait, stop_after=1):
            woken.add(note.payload)
        if woken:
            for note in self._listen.notifies(timeout=COLLECT_S, stop_after=50_000):
                woken.add(note.payload)
        ids = self._due(_now()) | self._resolve(woken)
        if ids:
            todo = sorted(ids)
            for start in range(0, len(todo), BATCH):
                self.evaluate(todo[start : start + BATCH], _now())

    def _resolve(self, payloads: set[str]) -> set[UUID]:
        ids: set[UUID] = set()
        customers = []
        for p in payloads:
            kind, _, rest = p.partition(":")
            if kind == "customer" and _is_uuid(rest):
                customers.append(rest)
            elif _is_uuid(p):
                ids.add(UUID(p))
        if customers:
            assert self._conn is not None
            ids.update(ls.ids_of_customers(self._conn, customers))
        return ids

    def _due(self, now: datetime) -> set[UUID]:
        due = set()
        while self._heap and self._heap[0][0] <= now:
            when, sid = heapq.heappop(self._heap)
            if self._next.get(sid) == when:
                del self._next[sid]
                due.add(sid)
        return due

    def _schedule(self, sid: UUID, when: datetime | None) -> None:
        if when is None:
            self._next.pop(sid, None)
            return
        if self._next.get(sid) != when:
            self._next[sid] = when
            heapq.heappush(self._heap, (when, sid))

    def evaluate(self, ids: list[UUID], now: datetime) -> None:
        """Decide for these subscriptions at `now`, store what is new, set their timers."""
        assert self._conn is not None
        ctx = ls.load(self._conn, self._redis, ids, now, self.rules)
        decisions: list[ls.NewDecision] = []
        notices: list[ls.OverdueNotice] = []
        statuses = []
        for sid in ids:
            sub = ctx.subscriptions.get(sid)
            if sub is None:
                self._schedule(sid, None)
                continue
            customer = ctx.customers[sub.customer_id]
            devices = tuple(ctx.devices.get(sid, ()))
            out = decide(sub, ctx.plans[sub.plan_id], devices, ctx.notices[sid], customer.channels, self.policy, now)
            self._schedule(sid, _earliest(out.next_change, _command_ends(devices, ctx.last, now)))
            if out.status is not sub.status:
                statuses.append((sid, sub.version, out.status))
            decisions += _new_decisions(sid, out, ctx.last, now)
            notices += [_notice(sid, customer, c, anchor) for anchor, c in out.notify_for]
        self.stats.evaluated += len(ids)
        self.stats.rounds += 1
        if not (decisions or notices or statuses):
            return
        stored = ls.act(self._conn, self._redis, decisions, notices, statuses, self.rules, now)
        for d, command in stored:
            if command is not None:  # look again once it may have expired unfinished
                ttl = timedelta(seconds=self.rules.ttl_for(Action(d.desired), None))
                self._schedule(
                    d.subscription_id, _earliest(self._next.get(d.subscription_id), now + ttl + COMMAND_LOOK_S)
                )
            if d.desired == "lock":
                self.stats.locks += 1
            elif d.desired == "unlock":
                self.stats.unlocks += 1
            else:
                self.stats.held += 1
            log.info("lockout: %s %s (%s): %s%s", d.desired, d.device_id, d.subscription_id, d.reason,
                     f" → command {command}" if command else "")  # fmt: skip
        self.stats.notices += len(notices)


def _new_decisions(sid: UUID, out: Outcome, last: dict[str, ls.LastDecision], now: datetime) -> list[ls.NewDecision]:
    """The decisions that change something for the device's chain (see lockout_store)."""
    found = []
    for d in out.decisions:
        prev = last.get(d.device_id)
        prev_id = prev.id if prev else 0
        locked = prev is not None and prev.desired == "lock"
        again = prev is not None and prev.command_state in RETRY_STATES and prev.desired == str(d.desired)
        why = (
            f"{d.reason}; the previous {prev.desired} {prev.command_state}: issued again"
            if again and prev
            else d.reason
        )
        if d.desired is Desired.LOCK and (not locked or again):
            assert out.due is not None and d.cause is not None
            due_at = now if again else out.due.lock_at or out.due.lock_due
            found.append(ls.NewDecision(sid, d.device_id, f"lock@{prev_id}", "lock", why, due_at, str(d.cause)))
        elif d.desired is Desired.UNLOCK and (locked or again):
            found.append(ls.NewDecision(sid, d.device_id, f"unlock@{prev_id}", "unlock", why, now, "renewed"))
        elif d.desired is Desired.NONE and not locked and out.due is not None:
            kind = d.reason.split(" ", 1)[0] if d.reason.startswith("exempt") else "notice"
            held = f"hold:{d.cause}:{int(out.due.anchor.timestamp())}:{kind}@{prev_id}"
            found.append(ls.NewDecision(sid, d.device_id, held, "none", d.reason, out.due.lock_due))
    return found


def _command_ends(devices: tuple[DeviceView, ...], last: dict[str, ls.LastDecision], now: datetime) -> datetime | None:
    """When the engine's latest command for one of these devices may have ended unfinished: shortly
    after its expiry (the command service marks it then), or a minute from now if that has passed
    (the command service is behind or down: no busy loop)."""
    ends = [p.command_expires for d in devices if (p := last.get(d.device_id)) is not None
            and p.command_state in WATCHED_STATES and p.command_expires is not None]  # fmt: skip
    if not ends:
        return None
    when = min(ends) + COMMAND_LOOK_S
    return when if when > now else now + COMMAND_RETRY_S


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _notice(sid: UUID, customer: Customer, channel: Channel, anchor: datetime) -> ls.OverdueNotice:
    when = anchor.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"Dear {customer.name}, your subscription ended or its payment is overdue ({when}). "
            "Your vehicles will be locked remotely once the notice period has passed, never while driven, "
            "unless you renew or pay. Renewing unlocks them at once.")  # fmt: skip
    return ls.OverdueNotice(sid, customer, channel, anchor, text)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _now() -> datetime:
    return datetime.now(UTC)


def run_lockout(database_url: str, redis_url: str, policy: PolicySettings, rules: Rules) -> None:
    from kernel.process import stop_on_signals

    stop = stop_on_signals()
    started = time.monotonic()
    LockoutEngine(database_url, redis_url, policy=policy, rules=rules).run(stop)
    log.info("lockout: stopped after %.0f s", time.monotonic() - started)
