"""End-to-end ingest benchmark on the real servers: publisher → Mosquitto → gateway(s) → Redis stream →
ingest worker(s) → TimescaleDB, against a bare `mosquitto_sub` fed by the same publisher.

    .venv/bin/python bench/ingest.py --records 1200000 --batch 1 --rate 20000
    .venv/bin/python bench/ingest.py --records 300000 --batch 1            # flat out, with baseline
    .venv/bin/python bench/ingest.py --records 1000000 --batch 10 --rate 100000
    .venv/bin/python bench/ingest.py --records 300000 --rate 10000 --no-baseline   # latency run

Servers: a private stack in a temporary folder (started and stopped here), or the servers named by
FLEET_DATABASE_URL / FLEET_MQTT_URL / FLEET_REDIS_URL. Nothing is truncated: every run uses device
ids with a fresh prefix and counts only its own rows.

Workload: `--devices` device ids (admitted through the Redis set `fleet:devices`, as the registry
does) publishing JSON v1 at QoS 1 on `fleet/<id>/telemetry`, one record per message or `--batch`
records per message. The publishers are `--publishers` processes that connect with the service
account (it may publish on fleet/#; per-device accounts would only add connections, not per-message
work at the broker), encode every packet before the clock starts and keep up to `--window` messages
unacknowledged. A run counts as accepted only what the broker acknowledged (PUBACK).

Measures: committed records/s (first publish → last row committed, and the steady rate between 10 %
and 90 % of the rows), loss (accepted − distinct rows stored), duplicates (rows − distinct (device,
time)), and for one message in `--sample-every`: publish → gateway (`received_at`) and publish → row
visible. The send time is taken right after the packet is written to the socket; the row is looked
up by (device, time) every `POLL_S`, so "visible" is an upper bound, late by up to one poll interval.
The baseline: the same publisher run with no gateway connected and `mosquitto_sub -q <qos>` as the
only subscriber; its rate is messages received / (last received − first publish).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import orjson  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from benchkit import pct  # noqa: E402
from ingest_load import STALL_S, Plan, PubResult, baseline, publish, publish_once  # noqa: E402

from ingest.service import POSITIONS_STREAM  # noqa: E402
from ingest.store import stored_counts  # noqa: E402
from kernel import keys  # noqa: E402
from kernel.settings import MqttTarget  # noqa: E402

POLL_S = 0.05
WINDOW = 500  # sample keys looked up per poll
QUEUE_LIMIT = 200_000  # what --drain may queue; the local stack allows 2,000,000 (localstack/mosquitto.py)

# -- observing the database ---------------------------------------------------------------------------
# By key, as the unique index has it: joining `device_keys` in the same query let the planner pick a
# plan that scanned the growing chunk on every poll (PostgreSQL CPU per record doubled).
_FOUND = (
    "SELECT t.device_key, t.time, t.received_at FROM unnest(%s::int[], %s::timestamptz[]) AS k(d, t)"
    " JOIN telemetry t ON t.device_key = k.d AND t.time = k.t"
)
_KEYS = "SELECT id, key FROM device_keys WHERE id = ANY(%s)"


@dataclass
class SampleSink:
    """Sampled messages waiting for their row; latencies of those found."""

    database_url: str
    waiting: dict[tuple[str, datetime], float] = field(default_factory=dict)
    to_gateway: list[float] = field(default_factory=list)
    to_row: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, device: str, ts: float, sent: float) -> None:
        with self.lock:
            self.waiting[(device, datetime.fromtimestamp(ts, UTC))] = sent

    def poll(self, stop: threading.Event) -> None:
        """Look the waiting keys up, at most `WINDOW` per poll, taking turns when more wait (after a
        loss, keys that never come would otherwise hide the newer ones)."""
        turn = 0
        device_keys: dict[str, int] = {}  # ingest gives a key when it first stores a device's record
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not stop.wait(POLL_S):
                with self.lock:
                    waiting = list(self.waiting)
                turn = turn + WINDOW if turn + WINDOW < len(waiting) else 0
                keys = waiting[turn : turn + WINDOW]
                unknown = list({device for device, _ in keys if device not in device_keys})
                if unknown:
                    device_keys.update(conn.execute(_KEYS, (unknown,)).fetchall())
                keys = [k for k in keys if k[0] in device_keys]
                if not keys:
                    continue
                devices = {device_keys[device]: device for device, _ in keys}
                asked = time.time()  # a row in the answer was committed before the query began
                rows = conn.execute(_FOUND, ([device_keys[k[0]] for k in keys], [k[1] for k in keys])).fetchall()
                with self.lock:
                    for key, when, received in rows:
                        sent = self.waiting.pop((devices[key], when))
                        self.to_gateway.append(received.timestamp() - sent)
                        self.to_row.append(asked - sent)


@dataclass
class Progress:
    """The ingest workers' committed-row counter, sampled every POLL_S."""

    redis_url: str
    start: int = 0
    series: list[tuple[float, int]] = field(default_factory=list)

    def committed(self, client: redis.Redis) -> int:
        return int(client.hget(keys.COUNTERS, "stored") or 0) - self.start

    def watch(self, stop: threading.Event) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            while not stop.wait(POLL_S):
                self.series.append((time.time(), self.committed(client)))
                consume_positions(client)
        finally:
            client.close()

    def time_at(self, n: int) -> float:
        return next((t for t, c in self.series if c >= n), self.series[-1][0] if self.series else time.time())


def consume_positions(client: redis.Redis) -> None:
    """Stand in for the geofence worker, which deletes each `fleet:positions` entry it has read.

    Without a reader the stream would keep every committed batch (up to its length bound), and
    Redis would spend the run rewriting its append-only file around a growing data set: CPU a
    deployment does not spend. Only when no geofence worker has ever attached (no consumer group):
    on shared servers the entries are that worker's. Its own cost is bench/geofence.py's subject.
    """
    try:
        if not client.xinfo_groups(POSITIONS_STREAM):
            client.xtrim(POSITIONS_STREAM, maxlen=0)
    except redis.ResponseError:  # no such stream yet
        pass


# -- CPU accounting -----------------------------------------------------------------------------------
def machine_busy(seconds: float = 2.0) -> float:
    """Fraction of all cores busy over `seconds` (other programs' load, before a run starts)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def process_cpu(pid: int, with_children: bool = False) -> float:
    """CPU seconds of a process (and of its reaped children); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if with_children else 0)
    cpu = ticks / os.sysconf("SC_CLK_TCK")
    if with_children:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        cpu += sum(process_cpu(int(k)) for k in kids)
    return cpu


# -- servers and services -----------------------------------------------------------------------------
@dataclass
class Servers:
    database_url: str
    mqtt_url: str
    redis_url: str
    pids: dict[str, int]  # the local stack's server pids, for CPU accounting; empty for external servers
    stack: object | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEET_DATABASE_URL": self.database_url, "FLEET_MQTT_URL": self.mqtt_url,
                "FLEET_REDIS_URL": self.redis_url}  # fmt: skip

    def cpu(self) -> dict[str, float]:
        return {name: process_cpu(pid, with_children=name == "postgres") for name, pid in self.pids.items()}


def start_servers(workdir: Path) -> Servers:
    from ingest.migrate import migrate

    env = os.environ
    if all(env.get(k) for k in ("FLEET_DATABASE_URL", "FLEET_MQTT_URL", "FLEET_REDIS_URL")):
        migrate(env["FLEET_DATABASE_URL"])
        return Servers(env["FLEET_DATABASE_URL"], env["FLEET_MQTT_URL"], env["FLEET_REDIS_URL"], {})
    from localstack import Stack, ensure_installed, free_ports

    ensure_installed(log=print)
    stack = Stack(workdir / "stack", free_ports(), log=lambda _m: None)
    urls = stack.up()
    migrate(urls.database_url)
    return Servers(urls.database_url, urls.mqtt_url, urls.redis_url, stack.pids(), stack)


# How a service process is started; bench/session.py puts a gateway on another MQTT client here.
COMMANDS = {"ingest": [sys.executable, "-m", "fleet.cli", "ingest"],
            "gateway": [sys.executable, "-m", "fleet.cli", "gateway"]}  # fmt: skip


def spawn(role: str, i: int, servers: Servers, plan: Plan, logs: Path, *args: str) -> subprocess.Popen[bytes]:
    variable = {"ingest": "FLEET_INGEST_ID", "gateway": "FLEET_GATEWAY_ID"}[role]
    with (logs / f"{role}-{i}.log").open("ab") as log:
        return subprocess.Popen(
            [*COMMANDS[role], *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**servers.env(), variable: f"{plan.prefix}{role}{i}"},
            cwd=_HERE.parent,
        )


def start_gateways(servers: Servers, plan: Plan, gateways: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    """Start the gateways and wait until each has (once more) connected and subscribed."""
    before = [_connects(logs / f"gateway-{i}.log") for i in range(gateways)]
    shared = ["--shared"] if gateways > 1 else []  # one gateway subscribes directly (docs/ARCHITECTURE.md)
    procs = [spawn("gateway", i, servers, plan, logs, *shared) for i in range(gateways)]
    deadline = time.monotonic() + 30
    while any(_connects(logs / f"gateway-{i}.log") <= before[i] for i in range(gateways)):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"the gateways did not start; see the logs in {logs}")
        time.sleep(0.05)
    return procs


def _connects(path: Path) -> int:
    return path.read_text().count("connected (session") if path.exists() else 0


def stop_services(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- one measured run ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    results: list[PubResult]
    start: float  # first publish (live) or gateways started (drain)
    committed_at: float
    steady_rate: float
    rows: int
    distinct: int
    folded: int
    sink: SampleSink
    cpu: dict[str, float]


def run_pipeline(plan: Plan, servers: Servers, gateways: int, workers: int, logs: Path, *, drain: bool) -> Outcome:
    """Live: publish while the services run. Drain: publish while the gateways are away (their broker
    sessions queue the messages), then start them and time until every row is committed."""
    admit = redis.Redis.from_url(servers.redis_url)
    admit.sadd("fleet:devices", *[plan.device(d) for d in range(plan.devices)], f"{plan.prefix}warm")
    admit.incr("fleet:devices:version")
    ingest = [spawn("ingest", i, servers, plan, logs) for i in range(workers)]
    gws = start_gateways(servers, plan, gateways, logs)
    try:
        progress = Progress(servers.redis_url)
        warm_up(servers, plan, logs)
        progress.start = int(admit.hget(keys.COUNTERS, "stored") or 0)
        folded0 = int(admit.hget(keys.COUNTERS, "duplicates") or 0)
        sink = SampleSink(servers.database_url)
        if drain:
            stop_services(gws)
            results = publish(plan, servers.mqtt_url)
        cpu0 = {**servers.cpu(), **{str(p.pid): process_cpu(p.pid) for p in gws + ingest}}
        if drain:  # the clock starts once they are subscribed: a Python process takes ~0.5 s to start
            gws = start_gateways(servers, plan, gateways, logs)
        start = time.time()
        stop = threading.Event()
        watchers = [threading.Thread(target=progress.watch, args=(stop,))]
        watchers += [] if drain else [threading.Thread(target=sink.poll, args=(stop,))]
        for thread in watchers:
            thread.start()
        try:
            if not drain:
                results = publish(plan, servers.mqtt_url, sink.add)
                start = min(r.first for r in results)
            wait_committed(progress, admit, plan.records)
        finally:
            stop.set()
            for thread in watchers:
                thread.join()
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in servers.cpu().items()}
        cpu["gateways"] = sum(process_cpu(p.pid) - cpu0.get(str(p.pid), 0.0) for p in gws)
        cpu["ingest"] = sum(process_cpu(p.pid) - cpu0.get(str(p.pid), 0.0) for p in ingest)
        cpu["publishers"] = sum(r.cpu_s for r in results)
        rows, distinct = stored_counts(servers.database_url, plan.prefix + "d")
        total = min(rows, plan.records)
        t10, t90 = progress.time_at(int(total * 0.1)), progress.time_at(int(total * 0.9))
        return Outcome(
            results,
            start,
            progress.time_at(total),
            0.8 * total / (t90 - t10) if t90 > t10 else 0.0,
            rows,
            distinct,
            int(admit.hget(keys.COUNTERS, "duplicates") or 0) - folded0,
            sink,
            cpu,
        )
    finally:
        stop_services(gws + ingest)
        retire_sessions(servers, [f"{plan.prefix}gateway{i}" for i in range(gateways)])
        admit.close()


def warm_up(servers: Servers, plan: Plan, logs: Path) -> None:
    """One record through the whole path, so connections and caches are warm before the clock starts."""
    warm = {"v": 1, "ts": time.time() - 60, "lat": 52.5, "lon": 13.4}
    publish_once(servers.mqtt_url, f"{plan.prefix}warm", f"fleet/{plan.prefix}warm/telemetry", orjson.dumps(warm))
    deadline = time.monotonic() + 30
    while not stored_counts(servers.database_url, f"{plan.prefix}warm")[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm-up record was not stored; see the logs in {logs}")
        time.sleep(0.05)


def wait_committed(progress: Progress, client: redis.Redis, target: int) -> None:
    while progress.committed(client) < target:
        if time.time() - progress.time_at(progress.committed(client)) > STALL_S:
            return
        time.sleep(POLL_S)
    time.sleep(3 * POLL_S)  # the last samples' rows


def retire_sessions(servers: Servers, instances: list[str]) -> None:
    """Leave no persistent gateway session behind: on shared servers it would keep taking messages."""
    from gateway.service import Gateway, gateway_client_id

    for instance in instances:
        gateway = Gateway(MqttTarget.parse(servers.mqtt_url), servers.redis_url, stream_key="fleet:ingest",
                          max_payload=16384, future_tolerance_s=300, client_id=gateway_client_id(instance))  # fmt: skip
        gateway.retire(threading.Event(), quiet_s=0.5)


# -- report -------------------------------------------------------------------------------------------
def report(plan: Plan, args: argparse.Namespace, base: tuple[float, int] | None, out: Outcome, busy: float) -> bool:
    first = out.start
    acked = sum(r.acked for r in out.results)
    accepted = plan.records if acked == plan.messages else acked * plan.batch
    stored = min(out.distinct, plan.records)
    rate = stored / (out.committed_at - first) if out.committed_at > first else 0.0
    pub_rate = plan.records / (max(r.last for r in out.results) - min(r.first for r in out.results))
    loss, dups = accepted - out.distinct, out.rows - out.distinct
    mode = f"{plan.rate:,.0f} records/s" if plan.rate else "flat out"
    print(f"\ningest benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores")
    print(f"  {plan.records:,} records, {plan.batch} per message ({plan.messages:,} messages), QoS {plan.qos}, "
          f"{plan.devices} devices, {plan.publishers} publishers ({mode}), {args.gateways} gateway(s), "
          f"{args.workers} ingest worker(s); other load before the run {busy:.0%} of the cores")  # fmt: skip
    how = "drained from the broker queue" if args.drain else "committed to TimescaleDB"
    rows = [("publisher (all PUBACKed)", pub_rate), (f"pipeline: {how}", rate),
            ("pipeline: steady (10 %-90 % of rows)", out.steady_rate)]  # fmt: skip
    if base is not None:
        what = "drains" if args.drain else "receives"
        rows.insert(1, (f"bare mosquitto_sub -q {plan.qos} {what} ({base[1]:,} msgs)", base[0]))
    for name, value in rows:
        print(f"  {name:42} {value:12,.0f} records/s")
    if base is not None and base[0] > 0:
        print(f"  {'ratio pipeline / mosquitto_sub':42} {rate / base[0]:12.2f}")
    print(f"  accepted {accepted:,}  stored {out.distinct:,}  loss {loss:,}  duplicate rows {dups:,}  "
          f"redeliveries folded {out.folded:,}")  # fmt: skip
    s = out.sink
    print(f"  latency ({len(s.to_row):,} samples)  publish->gateway p50 {pct(s.to_gateway, .5) * 1e3:.0f} ms "
          f"p99 {pct(s.to_gateway, .99) * 1e3:.0f} ms   publish->row p50 {pct(s.to_row, .5) * 1e3:.0f} ms "
          f"p99 {pct(s.to_row, .99) * 1e3:.0f} ms (row seen by polling every {POLL_S * 1e3:.0f} ms)")  # fmt: skip
    parts = "  ".join(f"{k} {v / plan.records * 1e6:.1f}" for k, v in sorted(out.cpu.items()))
    total = sum(out.cpu.values()) / plan.records * 1e6
    print(f"  CPU µs/record: {parts}  total {total:.1f}")
    return loss == 0 and dups == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1, help="records per message (1..1000)")
    parser.add_argument("--qos", type=int, default=1, choices=[1], help="only 1: QoS 0 has no acceptance to count")
    parser.add_argument("--rate", type=float, default=0.0, help="records/s over all publishers; 0 = flat out")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=4000, help="unacknowledged messages per publisher")
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sample-every", type=int, default=10, help="sample one message in N chunks")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare mosquitto_sub run")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="publish while no subscriber is connected, then time "
        "how fast the queued messages are drained (by mosquitto_sub, then by the pipeline)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    args = parser.parse_args(argv)
    if not (args.records >= 1 and 1 <= args.batch <= 1000 and 1 <= args.devices <= 9999 and args.publishers >= 1
            and args.gateways >= 1 and args.workers >= 1 and args.rate >= 0):  # fmt: skip
        parser.error("records, devices, publishers, gateways and workers must be positive, batch 1..1000")
    if args.drain and -(-args.records // args.batch) > QUEUE_LIMIT:
        parser.error(f"--drain: at most {QUEUE_LIMIT:,} messages are queued for one session")
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-ingest-"))
    (workdir / "logs").mkdir()
    servers = start_servers(workdir)
    try:
        run_id = secrets.token_hex(3)
        plan = Plan(f"b{run_id}-", args.records, args.batch, args.qos, args.devices, min(args.publishers, args.devices),
                    args.rate, args.window, args.sample_every, float(int(time.time()) - 3600))  # fmt: skip
        base_plan = Plan(f"s{run_id}-", *[getattr(plan, f) for f in ("records", "batch", "qos", "devices",
                         "publishers", "rate", "window", "sample_every", "t_base")])  # fmt: skip
        busy = machine_busy()
        base = None if args.no_baseline else baseline(base_plan, servers.mqtt_url, drain=args.drain)
        outcome = run_pipeline(plan, servers, args.gateways, args.workers, workdir / "logs", drain=args.drain)
        ok = report(plan, args, base, outcome, busy)
    finally:
        if servers.stack is not None:
            servers.stack.down()  # type: ignore[attr-defined]
        if args.keep:
            print(f"  kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
