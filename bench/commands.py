"""Command benchmark on the real servers: a burst of lock commands through the command service, the
broker, a device farm answering for every device, the gateway's ack stream and ingest's live state.

    .venv/bin/python bench/commands.py --devices 10000
    .venv/bin/python bench/commands.py --devices 2000 --issuers 4
    .venv/bin/python bench/commands.py --devices 10000 --issuers 1 --batch 500   # as the lockout engine

Servers: a private stack in a temporary folder (started and stopped here). Services: one gateway,
one ingest worker and one command service, each its own process (`fleet gateway|ingest|commands serve`).

Devices: `--devices` ids registered in the database and admitted through the Redis set, as the
registry does, without broker accounts: a farm process of `--farm` connections (the gateway's service
account, which may read and write fleet/#) shares `fleet/+/cmd` and answers for every device as
firmware would, acting once per id: the ack, then a JSON v1 record with `locked: true`. Per-device
connections add broker work, not command-path work (docs/performance.md has the broker's
per-connection figures). Every device reports once (standing) and is marked online first.

The burst: `--devices` forced locks (reason `theft`; the park rule would only add its 30 s) issued
by `--issuers` threads through `commands.issue_many`, `--batch` at a time: 1 as concurrent API calls
would, hundreds as the lockout engine does. Measured from the
database's own transition times: issue → delivered (the ack applied) and issue → confirmed (the
locked report applied), p50 / p99; commands per second (first issue → last confirmed); lost = not
confirmed after `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from benchkit import pct, start_stack  # noqa: E402
from command_farm import farm_main, report  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from commands.issue import TRANSITIONS_CHANNEL, CommandRequest, issue_many  # noqa: E402
from commands.model import Action, Rules  # noqa: E402
from kernel.livestate import VEHICLES_KEY  # noqa: E402
from kernel.settings import MqttTarget  # noqa: E402


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fleet.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=_HERE.parent)  # fmt: skip


def register(urls, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    with (
        psycopg.connect(urls.database_url, autocommit=True) as conn,
        conn.cursor().copy("COPY devices (id, model) FROM STDIN") as copy,
    ):
        for device in ids:
            copy.write_row((device, "bench"))
    client = redis.Redis.from_url(urls.redis_url)
    client.sadd("fleet:devices", *ids)
    client.incr("fleet:devices:version")
    client.close()


def report_body(device: str, locked: bool) -> bytes:
    return report(device, locked).payload


def settle(redis_url: str, devices: int, timeout: float = 60.0) -> None:
    """Wait until ingest holds every device's live state, then a little for the service's status feed:
    the burst must not share the machine with the setup's traffic."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while client.hlen(VEHICLES_KEY) < devices and time.monotonic() < deadline:
        time.sleep(0.2)
    client.close()
    time.sleep(1.0)


def connect(mqtt_url: str, client_id: str, subscribe: str | None = None) -> mqtt.Client:
    target = MqttTarget.parse(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    ready = threading.Event()
    if subscribe is None:
        client.on_connect = lambda *_a: ready.set()
    else:
        client.on_connect = lambda c, *_a: c.subscribe(subscribe, qos=1)
        client.on_subscribe = lambda *_a: ready.set()
    client.connect(target.host, target.port)
    client.loop_start()
    if not ready.wait(15):
        raise SystemExit(f"{client_id} could not connect")
    return client


class Announced:
    """Wall-clock time each command's transition was announced on `fleet:commands`: the service
    announces a round's transitions after their commit, so this is when the ack was stored, not the
    round's decision time that the transitions table holds."""

    def __init__(self, redis_url: str) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(TRANSITIONS_CHANNEL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-announced", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.2)
            if msg is None:
                continue
            now = time.time()
            for t in orjson.loads(msg["data"]):
                self.at.setdefault((t["id"], t["to"]), now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def offline_phase(
    database_url: str, setup: mqtt.Client, client: redis.Redis, away: list[str], offline_s: float, rules: Rules
) -> str:
    """Devices go offline; each gets an unlock, then an alarm; they come back after `offline_s`. Every
    command must be delivered after the return, none sent while away, none expired, each device's
    two sent in the order issued."""
    for device in away:
        setup.publish(f"fleet/{device}/status", b"offline", qos=1, retain=True)
    time.sleep(2.0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        firsts = issue_many(conn, client, [CommandRequest(d, Action.UNLOCK, "bench", reason="renewed") for d in away],
                            rules, datetime.now(UTC))  # fmt: skip
        seconds = issue_many(conn, client, [CommandRequest(d, Action.ALARM, "bench") for d in away], rules,
                             datetime.now(UTC))  # fmt: skip
    pairs = [(a.command.id, b.command.id) for a, b in zip(firsts, seconds, strict=True)]  # type: ignore[union-attr]
    ids = [c for pair in pairs for c in pair]
    time.sleep(offline_s)
    with psycopg.connect(database_url) as conn:
        sent_away = conn.execute("SELECT count(*) FROM commands WHERE id = ANY(%s::uuid[]) AND attempts > 0",
                                 (ids,)).fetchone()[0]  # fmt: skip
    back = time.monotonic()
    for device in away:
        setup.publish(f"fleet/{device}/status", b"online", qos=1, retain=True)
    done = 0
    while time.monotonic() < back + 120 and done < len(ids):
        time.sleep(0.5)
        with psycopg.connect(database_url) as conn:
            done = conn.execute("SELECT count(*) FROM commands WHERE id = ANY(%s::uuid[])"
                                " AND state IN ('delivered', 'confirmed')", (ids,)).fetchone()[0]  # fmt: skip
    took = time.monotonic() - back
    with psycopg.connect(database_url) as conn:
        expired = conn.execute("SELECT count(*) FROM commands WHERE id = ANY(%s::uuid[]) AND state = 'expired'",
                               (ids,)).fetchone()[0]  # fmt: skip
        sent_at = dict(conn.execute("SELECT id::text, sent_at FROM commands WHERE id = ANY(%s::uuid[])",
                                    (ids,)).fetchall())  # fmt: skip
    disorder = sum(1 for a, b in pairs if sent_at[a] is None or sent_at[b] is None or sent_at[a] > sent_at[b])
    return (f"offline phase: {len(away)} devices away {offline_s:.0f} s with 2 commands each: sent while away "
            f"{sent_away}; delivered after the return {done}/{len(ids)} in {took:.1f} s; expired {expired}; "
            f"out of order {disorder}")  # fmt: skip


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stack_cpu(stack: Any) -> float:
    """CPU of the servers: the processes whose command line names the stack's folder, and their
    children (PostgreSQL's backends)."""
    root = str(stack.state_dir).encode()
    procs: dict[int, tuple[int, bool]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                procs[int(entry.name)] = (ppid, root in (entry / "cmdline").read_bytes())
            except (OSError, ValueError, IndexError):
                continue
    servers = {pid for pid, (_ppid, named) in procs.items() if named}
    total = 0.0
    for pid, (ppid, _named) in procs.items():
        if pid in servers or ppid in servers:
            try:
                total += _cpu_s(pid)
            except (OSError, ValueError, IndexError):
                continue
    return total


@dataclass(frozen=True, slots=True)
class Result:
    """Per command of the burst (seconds from its issue, `created_at`): the round that sent it, the
    round that applied its ack and its report (the transitions table), and when the ack's transition
    was announced, after its commit (`Announced`): that is "delivered", the ack stored."""

    created: dict[str, datetime]
    sent: dict[str, datetime]
    decided: dict[str, datetime]  # the delivered transition's time
    stored: dict[str, float]  # wall clock, the delivered transition announced
    confirmed: dict[str, datetime]
    lost: int


def measure(database_url: str, ids: list[str], announced: dict[tuple[str, str], float]) -> Result:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.id::text, c.created_at, min(t.at) FILTER (WHERE t.to_state = 'sent'),"
            " min(t.at) FILTER (WHERE t.to_state = 'delivered'), min(t.at) FILTER (WHERE t.to_state = 'confirmed')"
            " FROM commands c JOIN command_transitions t ON t.command_id = c.id GROUP BY c.id, c.created_at"
        ).fetchall()
    stored = {c: announced[(c, "delivered")] for c, *_ in rows if (c, "delivered") in announced}
    confirmed = {c: f for c, _, _, _, f in rows if f is not None}
    return Result({c: t for c, t, *_ in rows}, {c: s for c, _, s, _, _ in rows if s is not None},
                  {c: d for c, _, _, d, _ in rows if d is not None}, stored, confirmed,
                  len(ids) - min(len(confirmed), len(stored)))  # fmt: skip


def print_result(r: Result, first_seen: dict[str, float], received: int) -> None:
    created = {c: t.timestamp() for c, t in r.created.items()}

    def line(name: str, values: list[float]) -> None:
        print(f"{name:<34} p50 {pct(values, 0.5) * 1000:6.0f} ms  p99 {pct(values, 0.99) * 1000:6.0f} ms"
              f"  max {max(values, default=float('nan')) * 1000:6.0f} ms")  # fmt: skip

    line("issue → sent (decided)", [t.timestamp() - created[c] for c, t in r.sent.items()])
    line("issue → device received", [t - created[c] for c, t in first_seen.items() if c in created])
    line("device → ack decided", [t.timestamp() - first_seen[c] for c, t in r.decided.items() if c in first_seen])
    line("issue → delivered (ack decided)", [t.timestamp() - created[c] for c, t in r.decided.items()])
    line("issue → delivered (ack stored)", [t - created[c] for c, t in r.stored.items()])
    line("issue → confirmed (decided)", [t.timestamp() - created[c] for c, t in r.confirmed.items()])
    first = min(created.values())
    last_stored = max(r.stored.values(), default=first)
    last_confirmed = max((t.timestamp() for t in r.confirmed.values()), default=first)
    print(f"first issue → last delivered (stored) {last_stored - first:.1f} s, → last confirmed "
          f"{last_confirmed - first:.1f} s: {len(r.confirmed) / (last_confirmed - first or 1):.0f} commands/s; "
          f"lost {r.lost}; commands the farm received {received}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--issuers", type=int, default=4, help="threads issuing commands at once")
    parser.add_argument("--batch", type=int, default=1, help="commands per issue_many call (lockout: hundreds)")
    parser.add_argument("--farm", type=int, default=2, help="farm processes sharing the command topics")
    parser.add_argument("--publishers", type=int, default=1, help="the service's publishing connections")
    parser.add_argument("--offline-share", type=float, default=0.0, help="then: this share of devices offline")
    parser.add_argument("--offline-s", type=float, default=60.0, help="for this long, with two commands each")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-commands-"))
    stack, urls = start_stack(workdir)
    env = {**os.environ, "FLEET_DATABASE_URL": urls.database_url, "FLEET_MQTT_URL": urls.mqtt_url,
           "FLEET_REDIS_URL": urls.redis_url, "FLEET_MQTT_COMMANDS_URL": urls.mqtt_commands_url}  # fmt: skip
    procs = [spawn([role], env, workdir / f"{role}.log") for role in ("gateway", "ingest")]
    env["FLEET_COMMANDS_PUBLISHERS"] = str(args.publishers)
    procs.append(spawn(["commands", "serve", "--instance", "bench"], env, workdir / "commands.log"))
    ctx = multiprocessing.get_context("fork")
    farm_ready, farm_stop, farm_out = [ctx.Event() for _ in range(args.farm)], ctx.Event(), ctx.Queue()
    farms: list[Any] = []
    announced: Announced | None = None
    try:
        ids = [f"cb-{i:05d}" for i in range(args.devices)]
        register(urls, ids)
        time.sleep(3.0)  # services connected, registry refreshed
        for i in range(args.farm):
            farms.append(ctx.Process(target=farm_main, args=(urls.mqtt_url, i, farm_ready[i], farm_stop, farm_out)))
            farms[-1].start()
        if not all(ready.wait(30) for ready in farm_ready):
            raise SystemExit("the device farm did not start")
        setup = connect(urls.mqtt_url, "bench-setup")
        for device in ids:
            setup.publish(f"fleet/{device}/status", b"online", qos=1, retain=True)
            last = setup.publish(f"fleet/{device}/telemetry", report_body(device, False), qos=1)
        last.wait_for_publish(120)
        settle(urls.redis_url, len(ids))
        announced = Announced(urls.redis_url)
        client = redis.Redis.from_url(urls.redis_url)
        rules = Rules()

        def send(chunk: list[str]) -> None:
            with psycopg.connect(urls.database_url, autocommit=True) as conn:
                for i in range(0, len(chunk), args.batch):
                    reqs = [CommandRequest(d, Action.LOCK, "bench", reason="theft", force=True)
                            for d in chunk[i : i + args.batch]]  # fmt: skip
                    issue_many(conn, client, reqs, rules, datetime.now(UTC))

        names = ("gateway", "ingest", "commands")
        cpu_before = {n: _cpu_s(p.pid) for n, p in zip(names, procs, strict=True)}
        cpu_before["farm"] = sum(_cpu_s(f.pid) for f in farms)
        cpu_before["stack"] = _stack_cpu(stack)
        cpu_before["issuers"] = time.process_time()
        print(f"burst of {len(ids)} commands", flush=True)
        started = time.monotonic()
        with ThreadPoolExecutor(args.issuers) as pool:
            list(pool.map(send, [ids[i :: args.issuers] for i in range(args.issuers)]))
        issued_s = time.monotonic() - started
        deadline = started + args.timeout
        while time.monotonic() < deadline:
            with psycopg.connect(urls.database_url) as conn:
                done = conn.execute("SELECT count(*) FROM commands WHERE state = 'confirmed'").fetchone()[0]
            if done >= len(ids):
                break
            time.sleep(0.5)
        cpu_burst = {n: _cpu_s(p.pid) - cpu_before[n] for n, p in zip(names, procs, strict=True)}
        cpu_burst["farm"] = sum(_cpu_s(f.pid) for f in farms) - cpu_before["farm"]
        cpu_burst["mosquitto, postgres, redis"] = _stack_cpu(stack) - cpu_before["stack"]
        cpu_burst["issuers"] = time.process_time() - cpu_before["issuers"]
        result = measure(urls.database_url, ids, announced.at)
        away = ids[: int(len(ids) * args.offline_share)]
        offline = offline_phase(urls.database_url, setup, client, away, args.offline_s, rules) if away else None
        farm_cpu = sum(_cpu_s(f.pid) for f in farms)
        farm_stop.set()
        first_seen: dict[str, float] = {}
        received = 0
        for _ in farms:
            seen, count = farm_out.get(timeout=60)
            received += count
            for command_id, at in seen.items():
                first_seen[command_id] = min(at, first_seen.get(command_id, at))
        setup.disconnect()
        setup.loop_stop()
        print(f"devices {len(ids)}, issuers {args.issuers}, batch {args.batch}, farm processes {args.farm}, "
              f"publishing connections {args.publishers}: issued in {issued_s:.1f} s "
              f"({len(ids) / issued_s:.0f} commands/s through commands.issue)")  # fmt: skip
        print_result(result, first_seen, received)
        if offline is not None:
            print(offline)
        cpu = {name: _cpu_s(proc.pid) for name, proc in zip(("gateway", "ingest", "commands"), procs, strict=True)}
        print("CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
              + f", farm {farm_cpu:.1f}, this process (issuers, setup) {time.process_time():.1f}")  # fmt: skip
        print("CPU seconds in the burst (issue to the last confirmation): "
              + ", ".join(f"{k} {v:.1f}" for k, v in cpu_burst.items()))  # fmt: skip
        lost = result.lost
        client.close()
        return 0 if lost == 0 else 1
    finally:
        if announced is not None:
            announced.close()
        farm_stop.set()
        for farm in farms:
            farm.join(30)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.down()
        print(f"logs in {workdir}" if args.keep else "")
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
