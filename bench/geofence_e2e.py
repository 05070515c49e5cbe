"""End-to-end geofence benchmark: does the geofence stage keep pace with ingest?

    .venv/bin/python bench/geofence_e2e.py --workload city --records 1000000 --devices 5000
    .venv/bin/python bench/geofence_e2e.py --workload worst --records 300000 --devices 2000
    .venv/bin/python bench/geofence_e2e.py --records 200000 --rate 100000      # paced publishers

The whole pipeline on the real servers: publishers → Mosquitto → gateway → Redis stream → ingest
workers → TimescaleDB and `fleet:positions` → geofence worker(s) → zone events, trips, rollups. Same
servers, publishers and services as bench/ingest.py (`--batch 10 --workers 2` by default), plus the
geofence workers and the zones of bench/fleet_workload.py.

Workloads (bench/fleet_workload.py): `city`, a busy city: thousands of vehicles parked and locked at
intersections, then riding street routes, with a service area, no-parking, slow and no-ride zones;
`worst`: every position enters or leaves a zone.

Prints: records/s committed by ingest and positions/s processed by geofence (first publish → last
one, and steady between 10 % and 90 %), side by side; the backlog between them over time (records
committed but not yet geofenced, and Redis's own `lag` of the geofence group); the zone events
stored against what the pure core (`geofence.transitions`) computes over the same records from an
empty state: lost (computed, not stored) and extra (stored, not computed), which must both be 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from fleet_workload import track, zones  # noqa: E402
from ingest_load import Plan, publish  # noqa: E402

from geofence import store  # noqa: E402
from geofence.batch import PositionBatch  # noqa: E402
from geofence.transitions import TransitionParams, transitions  # noqa: E402
from geofence.zoneset import ZoneSet  # noqa: E402
from kernel import keys  # noqa: E402

POLL_S = 0.1


def _ingest_bench() -> ModuleType:
    """bench/ingest.py (servers, services, warm-up); its name is the `ingest` package's, so by path."""
    spec = importlib.util.spec_from_file_location("bench_ingest", _HERE / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_bench = _ingest_bench()
Servers = _bench.Servers
machine_busy, process_cpu, retire_sessions, spawn = (
    _bench.machine_busy,
    _bench.process_cpu,
    _bench.retire_sessions,
    _bench.spawn,
)
start_gateways, start_servers, stop_services, warm_up = (
    _bench.start_gateways,
    _bench.start_servers,
    _bench.stop_services,
    _bench.warm_up,
)


@dataclass
class Sample:
    at: float
    stored: int  # records committed by ingest (this run's)
    geofenced: int  # positions the geofence workers acknowledged (this run's)
    lag: int  # entries in fleet:positions not yet delivered to the geofence group (Redis's lag)


@dataclass
class Watch:
    redis_url: str
    stored0: int = 0
    geofenced0: int = 0
    series: list[Sample] = field(default_factory=list)

    def read(self, client: redis.Redis) -> Sample:
        counters = client.hmget(keys.COUNTERS, "stored", "geofenced")
        lag = 0
        try:
            for group in client.xinfo_groups(keys.POSITIONS_STREAM):
                if group["name"] == b"geofence":
                    lag = int(group.get("lag") or 0)
        except redis.ResponseError:
            pass
        return Sample(time.time(), int(counters[0] or 0) - self.stored0, int(counters[1] or 0) - self.geofenced0, lag)

    def run(self, stop: threading.Event) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            while not stop.wait(POLL_S):
                self.series.append(self.read(client))
        finally:
            client.close()

    def time_at(self, n: int, what: str) -> float:
        return next((s.at for s in self.series if getattr(s, what) >= n), self.series[-1].at)


def spawn_geofence(servers: Servers, plan: Plan, i: int, logs: Path, profile: bool) -> subprocess.Popen[bytes]:
    profiler = ["-m", "cProfile", "-o", str(logs / f"geofence-{i}.prof")] if profile else []
    with (logs / f"geofence-{i}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *profiler, "-m", "fleet.cli", "geofence"], stdout=log, stderr=subprocess.STDOUT,
            env={**servers.env(), "FLEET_GEOFENCE_ID": f"{plan.prefix}geofence{i}"}, cwd=_HERE.parent,
        )  # fmt: skip


def wait_geofenced(client: redis.Redis, watch: Watch, logs: Path) -> None:
    """The warm-up record went through geofence too: the worker is up with its zones loaded."""
    deadline = time.monotonic() + 60
    while int(client.hget(keys.COUNTERS, "geofenced") or 0) < 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"the geofence worker processed nothing; see the logs in {logs}")
        time.sleep(0.05)


@dataclass
class Outcome:
    start: float
    watch: Watch
    cpu: dict[str, float]


def run(plan: Plan, servers: Servers, args: argparse.Namespace, logs: Path) -> Outcome:
    admit = redis.Redis.from_url(servers.redis_url)
    admit.sadd("fleet:devices", *[plan.device(d) for d in range(plan.devices)], f"{plan.prefix}warm")
    admit.incr("fleet:devices:version")
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        for zone in zones(plan.prefix, plan.seed):
            store.insert_zone(conn, zone)
    ingest = [spawn("ingest", i, servers, plan, logs) for i in range(args.workers)]
    geo = [spawn_geofence(servers, plan, i, logs, args.profile) for i in range(args.geofence_workers)]
    gws = start_gateways(servers, plan, args.gateways, logs)
    try:
        time.sleep(1.5)  # the geofence workers load the zones (polled every second)
        warm_up(servers, plan, logs)
        watch = Watch(servers.redis_url)
        wait_geofenced(admit, watch, logs)
        first = watch.read(admit)
        watch.stored0, watch.geofenced0 = first.stored, first.geofenced
        cpu0 = {**servers.cpu(), **{str(p.pid): process_cpu(p.pid) for p in gws + ingest + geo}}
        stop = threading.Event()
        thread = threading.Thread(target=watch.run, args=(stop,))
        thread.start()
        try:
            results = publish(plan, servers.mqtt_url)
            start = min(r.first for r in results)
            while True:
                last = watch.series[-1] if watch.series else watch.read(admit)
                if last.stored >= plan.records and last.geofenced >= plan.records:
                    break
                moved = max(watch.time_at(max(last.geofenced, 1), "geofenced"), watch.time_at(last.stored, "stored"))
                if time.time() - moved > args.stall:
                    print("  (stalled: reporting what arrived)")
                    break
                time.sleep(POLL_S)
        finally:
            stop.set()
            thread.join()
        cpu = {
            name: sum(process_cpu(p.pid) - cpu0[str(p.pid)] for p in procs)
            for name, procs in (("gateway", gws), ("ingest", ingest), ("geofence", geo))
        }
        cpu["publishers"] = sum(r.cpu_s for r in results)
        cpu.update({k: v - cpu0.get(k, 0.0) for k, v in servers.cpu().items()})
        return Outcome(start, watch, cpu)
    finally:
        stop_services(gws + ingest + geo)
        retire_sessions(servers, [f"{plan.prefix}gateway{i}" for i in range(args.gateways)])
        admit.close()


# -- the pure core on the same input --------------------------------------------------------------------
EventKey = tuple[str, str, str, int]  # device, zone, kind, time in ms


def expected_events(plan: Plan, chunk: int = 500) -> Counter[EventKey]:
    """What `transitions` computes over every device's records in one go, from an empty state."""
    zone_set = ZoneSet(hysteresis_m=10.0).with_zones(zones(plan.prefix, plan.seed))
    counts = plan.per_device()
    out: Counter[EventKey] = Counter()
    for d0 in range(0, plan.devices, chunk):
        ids, cols = [], []
        for d in range(d0, min(d0 + chunk, plan.devices)):
            tr = track(plan.workload, plan.seed, d, counts[d])
            ids.append(plan.device(d))
            t = np.array([round(plan.t_base + x, 3) for x in tr.time.tolist()])  # as published (np.round differs)
            cols.append((np.full(len(t), len(ids) - 1), t, tr.lon, tr.lat, tr.speed_kmh, tr.locked.astype(np.int8)))
        batch = PositionBatch.from_columns(ids, *(np.concatenate(c) for c in zip(*cols, strict=True)))
        events, _ = transitions({}, batch, zone_set, time.time(), TransitionParams())
        out.update((e.device_id, e.zone_id, e.kind.value, round(e.time.timestamp() * 1000)) for e in events)
    return out


def stored_events(database_url: str, prefix: str) -> Counter[EventKey]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT device_id, zone_id, kind, time FROM zone_events WHERE device_id LIKE %s", (f"{prefix}d%",)
        ).fetchall()
    return Counter((d, z, k, round(t.timestamp() * 1000)) for d, z, k, t in rows)


def trip_count(database_url: str, prefix: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM trips WHERE device_id LIKE %s", (f"{prefix}d%",)).fetchone()
    return int(row[0]) if row else 0


# -- report ---------------------------------------------------------------------------------------------
def rates(out: Outcome, total: int, what: str) -> tuple[float, float, float]:
    """(records/s first publish → last, steady 10 %-90 %, seconds to the last)."""
    w = out.watch
    done = w.time_at(total, what)
    t10, t90 = w.time_at(int(total * 0.1), what), w.time_at(int(total * 0.9), what)
    steady = 0.8 * total / (t90 - t10) if t90 > t10 else 0.0
    return total / max(done - out.start, 1e-9), steady, done - out.start


def report(plan: Plan, args: argparse.Namespace, out: Outcome, busy: float, load: str) -> bool:
    last = out.watch.series[-1]
    total = plan.records
    mode = f"{plan.rate:,.0f} records/s" if plan.rate else "flat out"
    print(f"\ngeofence end-to-end benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores  "
          f"load average {load}; other load before the run {busy:.0%} of the cores")  # fmt: skip
    print(f"  workload {plan.workload}: {total:,} records, {plan.devices:,} devices, {plan.batch} per message, "
          f"{plan.publishers} publishers ({mode}), {args.gateways} gateway(s), {args.workers} ingest worker(s), "
          f"{args.geofence_workers} geofence worker(s)")  # fmt: skip
    i_rate, i_steady, i_s = rates(out, min(total, last.stored), "stored")
    g_rate, g_steady, g_s = rates(out, min(total, last.geofenced), "geofenced")
    print(f"  {'':34}{'ingest (records)':>20}{'geofence (positions)':>24}")
    print(f"  {'done':34}{last.stored:>20,}{last.geofenced:>24,}")
    print(f"  {'per second, first publish → last':34}{i_rate:>20,.0f}{g_rate:>24,.0f}")
    print(f"  {'per second, steady (10 %-90 %)':34}{i_steady:>20,.0f}{g_steady:>24,.0f}")
    print(f"  {'seconds to the last':34}{i_s:>20.1f}{g_s:>24.1f}")
    print("  backlog over time (committed, not yet geofenced; Redis lag in entries):")
    series = [s for s in out.watch.series if s.at >= out.start] or out.watch.series
    step = max(1, len(series) // 12)
    for s in series[::step] + ([series[-1]] if (len(series) - 1) % step else []):
        print(f"    t={s.at - out.start:6.1f} s  stored {s.stored:>10,}  geofenced {s.geofenced:>10,}  "
              f"backlog {s.stored - s.geofenced:>9,}  lag {s.lag:>6,} entries")  # fmt: skip
    print(f"  largest backlog {max(s.stored - s.geofenced for s in series):,} records")
    expected = expected_events(plan)
    stored = stored_events(args.database_url, plan.prefix)
    lost, extra = expected - stored, stored - expected
    kinds = Counter(k[2] for k in expected.elements())
    print(f"  zone events: computed by the core {sum(expected.values()):,} "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}), stored {sum(stored.values()):,}, "
          f"lost {sum(lost.values()):,}, extra {sum(extra.values()):,}; "
          f"{sum(expected.values()) / total:.3f} events per position")  # fmt: skip
    print(f"  trips stored {trip_count(args.database_url, plan.prefix):,}")
    for key in list(lost)[:3]:
        print(f"    lost e.g. {key}")
    for key in list(extra)[:3]:
        print(f"    extra e.g. {key}")
    parts = "  ".join(f"{k} {v / total * 1e6:.1f}" for k, v in sorted(out.cpu.items()))
    print(f"  CPU µs/record: {parts}  total {sum(out.cpu.values()) / total * 1e6:.1f}")
    return not lost and not extra and last.geofenced >= total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["city", "worst"], default="city")
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=10, help="records per message")
    parser.add_argument("--rate", type=float, default=0.0, help="records/s over all publishers; 0 = flat out")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="ingest workers")
    parser.add_argument("--geofence-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall", type=float, default=120.0, help="give up after this long without progress (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stack)")
    parser.add_argument("--profile", action="store_true", help="run the geofence workers under cProfile")
    args = parser.parse_args(argv)
    if not (1 <= args.devices <= 9999 and args.records >= args.devices and 1 <= args.batch <= 1000):
        parser.error("devices 1..9999, records at least one per device, batch 1..1000")
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-geofence-"))
    (workdir / "logs").mkdir()
    servers = start_servers(workdir)
    args.database_url = servers.database_url
    try:
        plan = Plan(f"g{secrets.token_hex(3)}-", args.records, args.batch, 1, args.devices,
                    min(args.publishers, args.devices), args.rate, args.window, 10**9,
                    float(int(time.time()) - 86400), args.workload, args.seed)  # fmt: skip
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        busy = machine_busy()
        out = run(plan, servers, args, workdir / "logs")
        ok = report(plan, args, out, busy, load)
        if args.profile:
            import pstats

            pstats.Stats(str(workdir / "logs" / "geofence-0.prof")).sort_stats("tottime").print_stats(22)
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
