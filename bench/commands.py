"""Command benchmark on the real servers: a burst of lock commands through the command service, the
broker, a device farm answering for every device, the gateway's ack stream and ingest's live state.

    .venv/bin/python bench/commands.py --devices 10000
    .venv/bin/python bench/commands.py --devices 2000 --issuers 4

Servers: a private stack in a temporary folder (started and stopped here). Services: one gateway,
one ingest worker and one command service, each its own process (`fleet gateway|ingest|commands serve`).

Devices: `--devices` ids registered in the database and admitted through the Redis set, as the
registry does, without broker accounts: one farm connection (the gateway's service account, which
may read and write fleet/#) subscribes to `fleet/+/cmd` and answers for every device as firmware
would, acting once per id: the ack, then a JSON v1 record with `locked: true`. Per-device
connections add broker work, not command-path work (docs/performance.md has the broker's
per-connection figures). Every device reports once (standing) and is marked online first.

The burst: `--devices` forced locks (reason `theft`; the park rule would only add its 30 s) issued
by `--issuers` threads through `commands.issue`, as concurrent API calls would. Measured from the
database's own transition times: issue → delivered (the ack applied) and issue → confirmed (the
locked report applied), p50 / p99; commands per second (first issue → last confirmed); lost = not
confirmed after `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from commands.issue import CommandRequest, issue  # noqa: E402
from commands.model import Action, Rules  # noqa: E402
from gateway.settings import MqttTarget  # noqa: E402


def start_stack(workdir: Path):  # type: ignore[no-untyped-def]
    from gateway.stack import Stack, ensure_installed, free_ports
    from ingest.migrate import migrate

    ensure_installed(log=print)
    stack = Stack(workdir / "stack", free_ports(), log=lambda _m: None)
    urls = stack.up()
    migrate(urls.database_url)
    return stack, urls


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], env=env, stdout=out,
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


class Farm:
    """One MQTT connection answering for every device: ack once per id, then report locked."""

    def __init__(self, mqtt_url: str) -> None:
        target = MqttTarget.parse(mqtt_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-farm", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(target.username, target.password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.done: set[str] = set()
        self.received = 0
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe("fleet/+/cmd", qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_command
        self.client.connect(target.host, target.port)
        self.client.loop_start()
        if not subscribed.wait(15):
            raise SystemExit("the device farm could not subscribe")

    def report(self, device: str, locked: bool) -> None:
        body = {"v": 1, "ts": datetime.now(UTC).isoformat(), "lat": 52.52, "lon": 13.4, "speed_kmh": 0.0,
                "locked": locked}  # fmt: skip
        self.client.publish(f"fleet/{device}/telemetry", orjson.dumps(body), qos=1)

    def _on_command(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        device = msg.topic.split("/")[1]
        command = orjson.loads(msg.payload)
        ack = {"v": 1, "id": command["id"], "result": "ok", "detail": "locked"}
        first = command["id"] not in self.done
        self.done.add(command["id"])
        client.publish(f"fleet/{device}/cmd/ack", orjson.dumps(ack), qos=1)
        if first:
            self.report(device, True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-commands-"))
    stack, urls = start_stack(workdir)
    env = {**os.environ, "FLEET_DATABASE_URL": urls.database_url, "FLEET_MQTT_URL": urls.mqtt_url,
           "FLEET_REDIS_URL": urls.redis_url, "FLEET_MQTT_COMMANDS_URL": urls.mqtt_commands_url}  # fmt: skip
    procs = [spawn([role], env, workdir / f"{role}.log") for role in ("gateway", "ingest")]
    procs.append(spawn(["commands", "serve", "--instance", "bench"], env, workdir / "commands.log"))
    farm = None
    try:
        ids = [f"cb-{i:05d}" for i in range(args.devices)]
        register(urls, ids)
        time.sleep(3.0)  # services connected, registry refreshed
        farm = Farm(urls.mqtt_url)
        for device in ids:
            farm.client.publish(f"fleet/{device}/status", b"online", qos=1, retain=True)
            farm.report(device, False)
        time.sleep(3.0)  # statuses and reports through the pipeline
        client = redis.Redis.from_url(urls.redis_url)
        rules = Rules()

        def send(chunk: list[str]) -> None:
            with psycopg.connect(urls.database_url, autocommit=True) as conn:
                for device in chunk:
                    req = CommandRequest(device, Action.LOCK, "bench", reason="theft", force=True)
                    issue(conn, client, req, rules, datetime.now(UTC))

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
        print(f"devices {len(ids)}, issuers {args.issuers}: issued in {issued_s:.1f} s "
              f"({len(ids) / issued_s:.0f} commands/s through commands.issue)")  # fmt: skip
        print(f"issue → sent       p50 {pct(sent, 0.5) * 1000:.0f} ms  p99 {pct(sent, 0.99) * 1000:.0f} ms")
        print(f"issue → delivered  p50 {pct(delivered, 0.5) * 1000:.0f} ms  p99 {pct(delivered, 0.99) * 1000:.0f} ms")
        print(f"issue → confirmed  p50 {pct(confirmed, 0.5) * 1000:.0f} ms  p99 {pct(confirmed, 0.99) * 1000:.0f} ms")
        print(f"first issue → last confirmed {span:.1f} s: {len(confirmed) / span if span else 0:.0f} commands/s; "
              f"lost {lost}; commands the farm received {farm.received}")  # fmt: skip
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
            farm.close()
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
