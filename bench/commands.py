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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from commands.issue import CommandRequest, issue_many  # noqa: E402
from commands.model import Action, Rules  # noqa: E402
from kernel.settings import MqttTarget  # noqa: E402


def start_stack(workdir: Path):  # type: ignore[no-untyped-def]
    from ingest.migrate import migrate
    from localstack import Stack, ensure_installed, free_ports

    ensure_installed(log=print)
    stack = Stack(workdir / "stack", free_ports(), log=lambda _m: None)
    urls = stack.up()
    migrate(urls.database_url)
    return stack, urls


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


def report(client: mqtt.Client, device: str, locked: bool) -> None:
    body = {"v": 1, "ts": datetime.now(UTC).isoformat(), "lat": 52.52, "lon": 13.4, "speed_kmh": 0.0,
            "locked": locked}  # fmt: skip
    client.publish(f"fleet/{device}/telemetry", orjson.dumps(body), qos=1)


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


def farm_main(mqtt_url: str, connections: int, ready: Any, stop: Any, out: Any) -> None:
    """The device farm, in its own process: `connections` clients share the command topics (MQTT 5
    shared subscription), so the broker's in-flight window per client does not cap the burst. Each
    command id is acted on once: the ack, then a report with `locked: true`."""
    lock = threading.Lock()
    first_seen: dict[str, float] = {}
    received = [0]

    def on_command(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[1]
        command = orjson.loads(msg.payload)
        command_id = command["id"]
        with lock:
            received[0] += 1
            first = command_id not in first_seen
            first_seen.setdefault(command_id, time.time())
        ack = {"v": 1, "id": command_id, "result": "ok", "detail": "locked"}
        client.publish(f"fleet/{device}/cmd/ack", orjson.dumps(ack), qos=1)
        if first and command["action"] in ("lock", "unlock"):
            report(client, device, command["action"] == "lock")

    clients = []
    for i in range(connections):
        client = connect(mqtt_url, f"bench-farm-{i}", "$share/bench-farm/fleet/+/cmd")
        client.on_message = on_command
        clients.append(client)
    ready.set()
    stop.wait()
    out.put((first_seen, received[0]))
    for client in clients:
        client.disconnect()
        client.loop_stop()


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


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def measure(database_url: str, ids: list[str]) -> tuple[list[float], list[float], list[float], float, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.created_at, min(t.at) FILTER (WHERE t.to_state = 'delivered'),"
            " min(t.at) FILTER (WHERE t.to_state = 'confirmed'), min(t.at) FILTER (WHERE t.to_state = 'sent')"
            " FROM commands c"
            " JOIN command_transitions t ON t.command_id = c.id GROUP BY c.id, c.created_at"
        ).fetchall()
    delivered = [(d - c).total_seconds() for c, d, _, _ in rows if d is not None]
    confirmed = [(f - c).total_seconds() for c, _, f, _ in rows if f is not None]
    sent = [(s - c).total_seconds() for c, _, _, s in rows if s is not None]
    first = min(r[0] for r in rows)
    last = max((r[2] for r in rows if r[2] is not None), default=first)
    return sent, delivered, confirmed, (last - first).total_seconds(), len(ids) - len(confirmed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--issuers", type=int, default=4, help="threads issuing commands at once")
    parser.add_argument("--batch", type=int, default=1, help="commands per issue_many call (lockout: hundreds)")
    parser.add_argument("--farm", type=int, default=8, help="farm connections sharing the command topics")
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
    procs.append(spawn(["commands", "serve", "--instance", "bench"], env, workdir / "commands.log"))
    ctx = multiprocessing.get_context("fork")
    farm_ready, farm_stop, farm_out = ctx.Event(), ctx.Event(), ctx.Queue()
    farm = None
    try:
        ids = [f"cb-{i:05d}" for i in range(args.devices)]
        register(urls, ids)
        time.sleep(3.0)  # services connected, registry refreshed
        farm = ctx.Process(target=farm_main, args=(urls.mqtt_url, args.farm, farm_ready, farm_stop, farm_out))
        farm.start()
        if not farm_ready.wait(30):
            raise SystemExit("the device farm did not start")
        setup = connect(urls.mqtt_url, "bench-setup")
        for device in ids:
            setup.publish(f"fleet/{device}/status", b"online", qos=1, retain=True)
            report(setup, device, False)
        time.sleep(3.0)  # statuses and reports through the pipeline
        client = redis.Redis.from_url(urls.redis_url)
        rules = Rules()

        def send(chunk: list[str]) -> None:
            with psycopg.connect(urls.database_url, autocommit=True) as conn:
                for i in range(0, len(chunk), args.batch):
                    reqs = [CommandRequest(d, Action.LOCK, "bench", reason="theft", force=True)
                            for d in chunk[i : i + args.batch]]  # fmt: skip
                    issue_many(conn, client, reqs, rules, datetime.now(UTC))

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
        sent, delivered, confirmed, span, lost = measure(urls.database_url, ids)
        away = ids[: int(len(ids) * args.offline_share)]
        offline = offline_phase(urls.database_url, setup, client, away, args.offline_s, rules) if away else None
        farm_stop.set()
        first_seen, received = farm_out.get(timeout=60)
        setup.disconnect()
        setup.loop_stop()
        with psycopg.connect(urls.database_url) as conn:
            rows = conn.execute(
                "SELECT command_id::text, min(at) FILTER (WHERE to_state = 'sent'),"
                " min(at) FILTER (WHERE to_state = 'delivered') FROM command_transitions GROUP BY command_id"
            ).fetchall()
        to_farm = [first_seen[c] - s.timestamp() for c, s, _ in rows if c in first_seen and s]
        farm_to_ack = [d.timestamp() - first_seen[c] for c, _, d in rows if c in first_seen and d]
        print(f"devices {len(ids)}, issuers {args.issuers}, batch {args.batch}: issued in {issued_s:.1f} s "
              f"({len(ids) / issued_s:.0f} commands/s through commands.issue)")  # fmt: skip
        print(f"issue → sent       p50 {pct(sent, 0.5) * 1000:.0f} ms  p99 {pct(sent, 0.99) * 1000:.0f} ms")
        print(
            f"first send → farm  p50 {pct(to_farm, 0.5) * 1000:.0f} ms  p99 {pct(to_farm, 0.99) * 1000:.0f} ms;"
            f" farm → delivered p50 {pct(farm_to_ack, 0.5) * 1000:.0f} ms  p99 {pct(farm_to_ack, 0.99) * 1000:.0f} ms"
        )
        print(f"issue → delivered  p50 {pct(delivered, 0.5) * 1000:.0f} ms  p99 {pct(delivered, 0.99) * 1000:.0f} ms")
        print(f"issue → confirmed  p50 {pct(confirmed, 0.5) * 1000:.0f} ms  p99 {pct(confirmed, 0.99) * 1000:.0f} ms")
        print(f"first issue → last confirmed {span:.1f} s: {len(confirmed) / span if span else 0:.0f} commands/s; "
              f"lost {lost}; commands the farm received {received}")  # fmt: skip
        if offline is not None:
            print(offline)
        cpu = {name: _cpu_s(proc.pid) for name, proc in zip(("gateway", "ingest", "commands"), procs, strict=True)}
        print(
            "CPU seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            + f", this process {time.process_time():.1f}"
        )
        client.close()
        return 0 if lost == 0 else 1
    finally:
        if farm is not None:
            farm_stop.set()
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
