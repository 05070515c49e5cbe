"""The command service (`fleet commands serve`): decides with the pure lifecycle, stores, then publishes.

One thread decides; three feed it through one queue: acks from the gateway's stream `fleet:cmd-acks`
(consumer group `commands`, acknowledged only after the transition is committed), the live state and
wake-ups from Redis pub/sub (`fleet:live`, `fleet:cmd-wake`), and device status from the broker
(`fleet/+/status`, retained, so a fresh subscription knows who is online). Timers (ack timeouts,
expiry, the park clock) live in a heap built from the database: nothing polls.

Restart-safe because the database is the only truth: a command is stored as `sent` before it is
published, so a crash between the two leaves a `sent` command whose ack timeout resends it; a
crash after the publish and before the ack leaves the ack pending in the stream for the next start.
Several services may run: every change is a compare-and-set on the command's version, and the one
that loses reloads the command instead of publishing.
"""

from __future__ import annotations

import gc
import heapq
import logging
import os
import queue
import re
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis

from commands import feeds, store
from commands.fleetview import observe
from commands.issue import TRANSITIONS_CHANNEL, WAKE_CHANNEL
from commands.lifecycle import Acked, Step, Tick, step
from commands.model import DESIRED_STATE, PENDING, TERMINAL, Action, Command, Rules, State, Vehicle
from commands.publisher import CommandPublisher, Outgoing, PublishError
from commands.theftwatch import Raised, TheftWatch
from commands.wire import ACKS_STREAM, BadAck, command_topic, decode_ack_entry, encode_command, expiry_interval_s
from kernel import metrics
from kernel.deadletter_store import insert_dead_letters
from kernel.livestate import LIVE_CHANNEL, ONLINE_KEY, VEHICLES_KEY
from kernel.ratelimit import RateLimitedLog
from kernel.settings import DURABLE_COMMIT, MqttTarget

log = logging.getLogger(__name__)

GROUP = "commands"
MAX_WAIT_S = 0.5  # longest sleep between looks at the stop flag
RETRY_S = 1.0  # after a refused database or Redis call
# Commands looked at per round: a burst goes out in slices, so the first are on their way (and their
# acks coming back) while the service decides the next, instead of all waiting for one huge round.
ROUND_COMMANDS = 1_000


@dataclass(slots=True)
class CommandStats:
    sent: int = 0
    acks: int = 0
    transitions: int = 0
    dead_acks: int = 0
    lost_races: int = 0


@dataclass(slots=True)
class _Round:
    acks: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    woken: set[str] = field(default_factory=set)  # command ids to reload from the database
    look: set[str] = field(default_factory=set)  # command ids to look at as they are in memory
    devices: set[str] = field(default_factory=set)  # devices whose commands must be looked at
    thefts: list[Raised] = field(default_factory=list)


class CommandService:
    def __init__(
        self, mqtt_url: str, redis_url: str, database_url: str, *, rules: Rules | None = None,
        consumer: str | None = None, publishers: int = 1,
    ) -> None:  # fmt: skip
        self.rules = rules or Rules()
        self._publishers = publishers
        self._target = MqttTarget.parse(mqtt_url)
        self._redis_url = redis_url
        self._database_url = database_url
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = CommandStats()
        self.commands: dict[str, Command] = {}
        self.vehicles: dict[str, Vehicle] = defaultdict(Vehicle)
        self._timers: list[tuple[datetime, str]] = []
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=100_000)  # producers block when full
        self._warn = RateLimitedLog(log)
        self._ready = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._carry = _Round()  # what the last round could not finish: acks to retry, commands to look at
        self.theft = TheftWatch(self.rules)

    # --- life -------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        """True once the service has loaded its commands and subscribed to status and acks."""
        return self._ready.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        self._redis = redis.Redis.from_url(self._redis_url)
        client = feeds.status_client(self._target, f"fleet-commands-{self.consumer}", self._inbox)
        self._out = CommandPublisher(self._target, f"fleet-commands-{self.consumer}", self._publishers)
        feeders = [
            threading.Thread(target=feeds.read_acks, args=(self._redis_url, GROUP, self.consumer, self._inbox, stop),
                             name="commands-acks", daemon=True),
            threading.Thread(target=feeds.read_pubsub, args=(self._redis_url, self._inbox, stop),
                             name="commands-pubsub", daemon=True),
        ]  # fmt: skip
        try:
            self._until_ok(stop, self._load)
            client.connect_async(self._target.host, self._target.port)
            try:
                self._out.open()
            except PublishError as exc:  # each connection is tried again on its next publish
                self._warn.warning("publish", "commands: cannot publish yet: %s", exc)
            client.loop_start()
            for thread in feeders:
                thread.start()
            self._ready.set()
            while not stop.is_set():
                self._round(stop)
        finally:
            stop.set()
            client.disconnect()
            client.loop_stop()
            self._out.close()
            for thread in feeders:
                if thread.is_alive():
                    thread.join(timeout=5)
            if self._conn is not None:
                self._conn.close()
            self._redis.close()

    def _until_ok(self, stop: threading.Event, action: Any) -> None:
        while not stop.is_set():
            try:
                action()
                return
            except (psycopg.Error, redis.RedisError) as exc:
                self._warn.warning("load", "commands: cannot load state, retrying: %s", exc)
                self._conn = None
                stop.wait(RETRY_S)

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._database_url, autocommit=True, options=DURABLE_COMMIT)
        return self._conn

    def _load(self) -> None:
        """Every unfinished command, and what Redis knows of the vehicles: the state a restart needs."""
        self._load_vehicles()
        for device, flag in self._redis.hgetall(ONLINE_KEY).items():
            v = self.vehicles[device.decode()]
            self.vehicles[device.decode()] = replace(v, online=flag == b"1")
        self._resync_commands()
        busy = {c.device_id for c in self.commands.values() if c.action in DESIRED_STATE and c.state in PENDING}
        self.theft.load(self._db(), busy, self.vehicles)
        log.info("commands: %d unfinished commands loaded, %d locked vehicles watched", len(self.commands),
                 len(self.theft.watches))  # fmt: skip

    def _load_vehicles(self) -> None:
        for raw in self._redis.hvals(VEHICLES_KEY):
            state = _loads(raw)
            if isinstance(state, dict) and isinstance(state.get("id"), str):
                self.vehicles[state["id"]] = observe(self.vehicles[state["id"]], state, self.rules)

    def _resync_commands(self) -> None:
        """Merge the stored unfinished commands in (a wake-up may have been missed) and look at all."""
        for command in store.load_active(self._db()):
            known = self.commands.get(command.id)
            if known is None or known.version != command.version:
                self.commands[command.id] = command
        self._carry.look.update(self.commands)

    # --- one round: take what came in, decide, store, publish ---------------------------------------

    def _round(self, stop: threading.Event) -> None:
        now = _now()
        work, self._carry = self._carry, _Round()
        wait = MAX_WAIT_S if not self._timers else max(0.0, min(MAX_WAIT_S, (self._timers[0][0] - now).total_seconds()))
        if work.acks or work.woken or work.devices or work.look:
            wait = 0.0
        try:
            self._take(self._inbox.get(timeout=wait), work)
            while True:
                self._take(self._inbox.get_nowait(), work)
        except queue.Empty:
            pass
        try:
            self._decide(work, _now())
        except (psycopg.Error, redis.RedisError) as exc:
            # Nothing was acknowledged: the acks come back from the stream, the rest from a reload.
            self._warn.warning("decide", "commands: store refused a round, reloading: %s", exc)
            self._conn = None
            stop.wait(RETRY_S)
            self.commands.clear()
            self._timers.clear()
            self._carry.acks.extend(work.acks)
            self._until_ok(stop, self._resync_commands)

    def _take(self, item: tuple[str, Any], work: _Round) -> None:
        kind, data = item
        if kind == "acks":
            work.acks.extend(data)
        elif kind == "status":
            device, online = data
            self.vehicles[device] = replace(self.vehicles[device], online=online)
            work.devices.add(device)
        elif kind == WAKE_CHANNEL:
            work.woken.update(data.decode(errors="replace").split())  # ids separated by spaces
        elif kind == LIVE_CHANNEL:
            states = _loads(data)
            for state in states if isinstance(states, list) else ():
                if isinstance(state, dict) and isinstance(state.get("id"), str):
                    device = state["id"]
                    self.vehicles[device] = observe(self.vehicles[device], state, self.rules)
                    work.devices.add(device)
                    raised = self.theft.observe(device, self.vehicles[device], _now())
                    if raised is not None:
                        work.thefts.append(raised)
        elif kind == "quarantined":  # their dead letters (the entries are in fleet:quarantine already)
            insert_dead_letters(self._db(), data)
        elif kind == "resync":  # (re)subscribed: what was published meanwhile is in the hash and the table
            self._resync_commands()
            self._load_vehicles()

    def _decide(self, work: _Round, now: datetime) -> None:
        conn = self._db()
        woken = [i for i in work.woken if _is_uuid(i)]
        found = store.get_many(conn, woken) if woken else {}
        for command_id in woken:  # one query for every wake-up of the round
            self.commands.pop(command_id, None)
            if command_id in found:
                self._keep(found[command_id])
        steps: dict[str, tuple[Command, Step]] = {}
        acked, dead = self._ack_steps(conn, work.acks, now, steps)
        due = self._due(now) | {c.id for c in self.commands.values() if c.device_id in work.devices}
        due |= work.woken | work.look
        looked = sorted((self.commands[i] for i in due if i in self.commands), key=lambda c: c.created_at)
        if len(looked) > ROUND_COMMANDS:  # oldest first; a device's later commands never overtake its earlier
            self._carry.look.update(c.id for c in looked[ROUND_COMMANDS:])
            looked = looked[:ROUND_COMMANDS]
        for command in looked:
            before, so_far = steps.get(command.id, (command, Step(command)))
            _chain(steps, before, so_far, step(so_far.command, Tick(now), self.vehicles[command.device_id], self.rules))
        changes = [v for v in steps.values() if v[1].transitions]
        applied = store.apply(conn, changes)
        if dead:
            for entry_id, _fields, reason in dead:
                log.debug("commands: ack entry %s dead-lettered: %s", entry_id, reason)
            store.dead_letter(conn, ACKS_STREAM, dead, now)
        won = {s.command.id for s in applied}
        lost = {before.id for before, s in changes if before.id not in won}
        for before, s in steps.values():
            if before.id in lost:
                self.stats.lost_races += 1
                self._reload(conn, before.id)  # another writer moved it: decide again from what is stored
                self._carry.look.add(before.id)
            elif before.id not in won:
                self._keep(s.command)  # a new timer only, nothing stored
        by_entry = dict(acked)
        done_acks = [entry_id for entry_id, command_id in acked if command_id not in lost]
        self._carry.acks.extend(e for e in work.acks if by_entry.get(e[0]) in lost)  # again, on the fresh state
        outgoing = []
        for s in sorted(applied, key=lambda s: s.command.created_at):
            self._keep(s.command)
            if s.publish:
                outgoing.append(_outgoing(s.command, now))
        if outgoing:
            self._publish(outgoing)
        if done_acks:
            self._redis.xack(ACKS_STREAM, GROUP, *done_acks)
            self.stats.acks += len(done_acks)
        self._announce(applied)
        self._follow_locks(applied)
        if work.thefts:
            for r in work.thefts:
                log.warning("commands: %s suspected stolen: %s", r.device_id, r.suspicion.reason)
            self.theft.store(conn, self._redis, work.thefts)

    def _follow_locks(self, applied: list[Step]) -> None:
        """A confirmed lock starts the theft watch; a newer lock or unlock under way, or a confirmed
        unlock, ends it."""
        for s in applied:
            c = s.command
            if c.action not in DESIRED_STATE:
                continue
            if c.state is State.CONFIRMED:
                if c.action is Action.LOCK:
                    self.theft.locked(c.device_id, self.vehicles[c.device_id])
                else:
                    self.theft.released(c.device_id)
            elif c.state in PENDING:
                self.theft.released(c.device_id)

    def _ack_steps(
        self, conn: psycopg.Connection, entries: list[tuple[bytes, dict[bytes, bytes]]], now: datetime,
        steps: dict[str, tuple[Command, Step]],
    ) -> tuple[list[tuple[bytes, str | None]], list[tuple[bytes, dict[bytes, bytes], str]]]:  # fmt: skip
        """Each entry with the command it moves (None: dead-lettered), and the dead letters."""
        done: list[tuple[bytes, str | None]] = []
        dead: list[tuple[bytes, dict[bytes, bytes], str]] = []
        for entry_id, fields in entries:
            try:
                ack = decode_ack_entry(fields)
            except BadAck as exc:
                dead.append((entry_id, fields, str(exc)))
                done.append((entry_id, None))
                continue
            command = self.commands.get(ack.command_id) or self._stored(conn, ack.command_id)
            if command is None or command.device_id != ack.device_id:
                dead.append((entry_id, fields, "unknown_command" if command is None else "device_mismatch"))
                done.append((entry_id, None))
                continue
            done.append((entry_id, command.id))
            before, so_far = steps.get(command.id, (command, Step(command)))
            event = Acked(now, ack.result, ack.detail)
            _chain(steps, before, so_far, step(so_far.command, event, self.vehicles[command.device_id], self.rules))
        return done, dead

    def _stored(self, conn: psycopg.Connection, command_id: str) -> Command | None:
        try:
            found = store.get(conn, command_id)
        except psycopg.errors.InvalidTextRepresentation:
            return None
        return None if found is None else found.command

    def _reload(self, conn: psycopg.Connection, command_id: str) -> None:
        self.commands.pop(command_id, None)
        command = self._stored(conn, command_id)
        if command is not None:
            self._keep(command)

    def _keep(self, command: Command) -> None:
        watching = command.state is not State.DELIVERED or (command.next_at is not None and command.next_at > _now())
        if command.state in TERMINAL or not watching:
            self.commands.pop(command.id, None)
            return
        self.commands[command.id] = command
        if command.next_at is not None:
            heapq.heappush(self._timers, (command.next_at, command.id))

    def _due(self, now: datetime) -> set[str]:
        due = set()
        while self._timers and self._timers[0][0] <= now:
            _when, command_id = heapq.heappop(self._timers)
            due.add(command_id)
        return due

    def _publish(self, outgoing: list[Outgoing]) -> None:
        """The round's commands, oldest first, in one write per connection. What is not written now
        (a connection down) is stored as sent already: the ack timeout sends it again."""
        self.stats.sent += self._out.publish(outgoing)

    def _announce(self, applied: list[Step]) -> None:
        """The round's transitions as one JSON array on `fleet:commands` (as ingest does on `fleet:live`)."""
        body = [
            {"id": t.command_id, "device_id": s.command.device_id, "action": s.command.action, "from": t.from_state,
             "to": t.to_state, "at": t.at.isoformat(), "actor": t.actor, "detail": t.detail}
            for s in applied for t in s.transitions
        ]  # fmt: skip
        if body:
            self._redis.publish(TRANSITIONS_CHANNEL, orjson.dumps(body))
            self.stats.transitions += len(body)
        for applied_step in applied:
            for t in applied_step.transitions:
                if t.to_state in TERMINAL:
                    metrics.COMMAND_OUTCOMES.labels(str(t.to_state)).inc()


def _outgoing(command: Command, now: datetime) -> Outgoing:
    return Outgoing(command.device_id, command_topic(command.device_id), encode_command(command),
                    expiry_interval_s(command, now))  # fmt: skip


def _chain(steps: dict[str, tuple[Command, Step]], before: Command, so_far: Step, nxt: Step) -> None:
    """Two events for one command in one round make one stored change, decided in order."""
    steps[before.id] = (before, Step(nxt.command, so_far.transitions + nxt.transitions, so_far.publish or nxt.publish))


_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def _is_uuid(text: str) -> bool:
    """What PostgreSQL's uuid type reads in the form we write (a regex: `uuid.UUID` costs more)."""
    return _UUID.fullmatch(text) is not None


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _now() -> datetime:
    return datetime.now(UTC)


def consumer_name(instance: str | None = None) -> str:
    """`commands-<instance>`, the instance defaulting to `FLEET_COMMANDS_ID`, then host name and pid:
    a stable name lets a restarted service take back at once the acks it had read and not finished."""
    return f"commands-{instance or os.environ.get('FLEET_COMMANDS_ID') or f'{socket.gethostname()}-{os.getpid()}'}"


def run_commands(
    mqtt_url: str, redis_url: str, database_url: str, rules: Rules, instance: str | None = None, publishers: int = 1
) -> None:
    from kernel.process import stop_on_signals

    # A burst makes hundreds of thousands of short-lived objects with no cycles; the default
    # thresholds run the cyclic collector thousands of times over them.
    gc.set_threshold(50_000, 20, 20)
    stop = stop_on_signals()
    CommandService(mqtt_url, redis_url, database_url, rules=rules, consumer=consumer_name(instance),
                   publishers=publishers).run(stop)  # fmt: skip
