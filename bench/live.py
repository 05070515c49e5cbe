"""`/v1/live` fan-out benchmark: many WebSocket clients, a steady stream of vehicle updates, the lag
each client sees.

    .venv/bin/python bench/live.py                       # 100 clients, 10,000 updates/s, 15 s
    .venv/bin/python bench/live.py --box-share 1.0       # every client watches the whole city
    .venv/bin/python bench/live.py --slow 5              # five clients that read once a second

Servers: a private stack in a temporary folder (Redis for the channel, PostgreSQL for the clients'
API key). The API is `create_app` under uvicorn in its own process, as `fleet api` serves it.

Load: a publisher process sends `--rate` vehicle states a second on `fleet:live` as ingest does (one
PUBLISH per batch of `--batch` states, each a JSON array), for `--vehicles` vehicles at random places
in the simulated city, each state stamped with the wall clock (`ts`) when it is published.

Clients: `--client-procs` processes hold `--clients` sockets; each watches a random box covering
`--box-share` of the city and records, for every vehicle in every tenth message it receives,
now - ts: the lag from the publish to the client's read. (It counts the vehicles of the other
messages without parsing them: parsing all of them made the benchmark's own clients, on the same
2 cores, the bottleneck.) `--slow` of them read one message a second: their feeds coalesce, and the
others' lag must not move. Reported per client (p50, p95, max), then across clients; updates
received; the API process's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import orjson  # noqa: E402
import redis  # noqa: E402
from benchkit import pct  # noqa: E402

from kernel import keys  # noqa: E402
from simulators.city import City  # noqa: E402

# Every client parses one message in this many for the lag of each vehicle in it and counts the
# vehicles of the others: parsing them all made the benchmark's own clients the bottleneck
SAMPLE_EVERY = 10
WARMUP_S = 2.0  # lag is recorded after this, once every client has its snapshot and the stream runs


def serve(database_url: str, redis_url: str, port: int) -> None:
    import uvicorn

    from api.app import create_app
    from api.deps import ApiConfig

    app = create_app(ApiConfig(database_url, redis_url))
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
    }  # as `fleet api`
    profile = os.environ.get("FLEET_BENCH_PROFILE")  # a file: the server's cProfile statistics
    if not profile:
        uvicorn.run(app, **options)
        return
    import cProfile

    cProfile.runctx("uvicorn.run(app, **options)", globals(), locals(), profile)


def publish(redis_url: str, rate: int, batch: int, vehicles: int, seconds: float, seed: int) -> None:
    city, rng = City(), random.Random(seed)
    client = redis.Redis.from_url(redis_url)
    interval = batch / rate
    start = next_at = time.monotonic()
    while time.monotonic() - start < seconds:
        now = time.time()
        states = [{"id": f"v{rng.randrange(vehicles)}", "lon": rng.uniform(city.lon_min, city.lon_max),
                   "lat": rng.uniform(city.lat_min, city.lat_max), "ts": now, "speed_kmh": 15.0,
                   "battery_pct": 80.0, "locked": False} for _ in range(batch)]  # fmt: skip
        client.publish(keys.LIVE_CHANNEL, orjson.dumps(states))
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    client.close()


def random_box(rng: random.Random, share: float) -> list[float]:
    city = City()
    width, height = (city.lon_max - city.lon_min) * share**0.5, (city.lat_max - city.lat_min) * share**0.5
    west = rng.uniform(city.lon_min, city.lon_max - width)
    south = rng.uniform(city.lat_min, city.lat_max - height)
    return [west, south, west + width, south + height]


async def one_client(url: str, key: str, box: list[float], slow: bool, until: float, record_from: float) -> dict:
    from websockets.asyncio.client import connect

    lags: list[float] = []
    received = messages = 0
    # a slow reader holds one message, not websockets' default queue of 16, so what waits for it
    # waits in the server's coalescing feed (and in the sockets' buffers)
    async with connect(url, max_size=None, max_queue=1 if slow else 16) as ws:
        await ws.send(orjson.dumps({"key": key, "bbox": box}).decode())
        while time.time() < until:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=max(0.1, until - time.time()))
            except TimeoutError:
                break
            now = time.time()
            messages += 1
            if now < record_from:
                continue
            if messages % SAMPLE_EVERY and not slow:  # counted, not parsed: the clients share 2 cores
                received += raw.count(b'{"id":') if isinstance(raw, bytes) else raw.count('{"id":')
                continue
            for vehicle in orjson.loads(raw)["vehicles"]:
                if slow or vehicle["ts"] >= record_from:
                    lags.append(now - vehicle["ts"])
                    received += 1
            if slow:
                await asyncio.sleep(1.0)
    return {"lags": lags, "received": received, "messages": messages, "slow": slow}


def run_clients(url: str, key: str, clients: int, slow: int, share: float, until: float, record_from: float,
                seed: int, out: Any) -> None:  # fmt: skip
    rng = random.Random(seed)
    boxes = [random_box(rng, share) for _ in range(clients)]

    async def main() -> list[dict]:
        return await asyncio.gather(*(one_client(url, key, boxes[i], i < slow, until, record_from)
                                      for i in range(clients)))  # fmt: skip

    out.send(asyncio.run(main()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=10_000, help="vehicle updates per second")
    parser.add_argument("--batch", type=int, default=100, help="states per PUBLISH (ingest: one batch)")
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--box-share", type=float, default=0.1, help="share of the city each client watches")
    parser.add_argument("--slow", type=int, default=0, help="clients that read one message a second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=4, help="processes the clients are spread over")
    args = parser.parse_args(argv)

    from api.keys import Role
    from api.keystore import Actor, create_key
    from ingest.migrate import migrate
    from localstack import Stack, ensure_installed, free_ports

    ensure_installed(log=print)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-live-"))
    stack = Stack(workdir / "stack", free_ports(), log=lambda _m: None)
    urls = stack.up()
    procs: list[multiprocessing.Process] = []
    try:
        migrate(urls.database_url)
        import psycopg

        with psycopg.connect(urls.database_url) as conn:
            _, key = create_key(conn, "bench", Role.VIEWER, Actor(None, "bench", None))
        port = _free_port()
        server = multiprocessing.Process(target=serve, args=(urls.database_url, urls.redis_url, port), daemon=True)
        server.start()
        procs.append(server)
        _wait_port(port)
        start = time.time() + 1.0
        record_from, until = start + WARMUP_S, start + args.seconds
        pipes = []
        for n in range(args.client_procs):  # each process its share of the clients (and of the slow ones)
            receiver, sender = multiprocessing.Pipe(duplex=False)
            share = range(n, args.clients, args.client_procs)
            slow = sum(1 for i in share if i < args.slow)
            proc = multiprocessing.Process(
                target=run_clients,
                args=(f"ws://127.0.0.1:{port}/v1/live", key, len(share), slow, args.box_share, until, record_from,
                      args.seed + n, sender),
            )  # fmt: skip
            proc.start()
            procs.append(proc)
            pipes.append(receiver)
        time.sleep(max(0.0, start - time.time()))
        publisher = multiprocessing.Process(
            target=publish, args=(urls.redis_url, args.rate, args.batch, args.vehicles, args.seconds - 1.0, args.seed)
        )
        publisher.start()
        procs.append(publisher)
        cpu_before, wall_before = _cpu_s(server.pid), time.monotonic()
        results: list[dict] = [r for pipe in pipes for r in pipe.recv()]
        server_cpu = (_cpu_s(server.pid) - cpu_before) / (time.monotonic() - wall_before)
        publisher.join()
        report(args, results)
        print(f"  API process CPU: {server_cpu:.0%} of one core while streaming; load average {os.getloadavg()[0]:.1f}")
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)  # uvicorn shuts down cleanly on it
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        stack.down()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the API did not listen on port {port}")


def report(args: argparse.Namespace, results: list[dict]) -> None:
    measured_s = args.seconds - 1.0 - WARMUP_S
    normal = [r for r in results if not r["slow"]]
    slow = [r for r in results if r["slow"]]
    print(f"{args.clients} clients ({args.slow} slow), {args.rate:,} updates/s in batches of {args.batch}, "
          f"{args.vehicles:,} vehicles, each client's box {args.box_share:.0%} of the city, {args.seconds:.0f} s "
          f"({os.cpu_count()} cores)")  # fmt: skip
    p50s = [pct(r["lags"], 0.5) * 1000 for r in normal if r["lags"]]
    p95s = [pct(r["lags"], 0.95) * 1000 for r in normal if r["lags"]]
    maxes = [max(r["lags"]) * 1000 for r in normal if r["lags"]]
    received = sum(r["received"] for r in normal)
    print(f"  clients with data: {len(p95s)} of {len(normal)}")
    if p95s:
        print(f"  lag per client, ms: p50 median {statistics.median(p50s):.0f} (worst {max(p50s):.0f}); "
              f"p95 median {statistics.median(p95s):.0f} (worst {max(p95s):.0f}); max {max(maxes):.0f}")  # fmt: skip
    print(f"  vehicle updates delivered: {received:,} ({received / measured_s:,.0f}/s over all clients, "
          f"{received / measured_s / max(1, len(normal)):,.0f}/s per client; "
          f"{args.rate * args.box_share:,.0f}/s land in a box; leaving ones are sent once more)")  # fmt: skip
    all_lags = [lag for r in normal for lag in r["lags"]]
    if all_lags:
        print(f"  all deliveries: p50 {pct(all_lags, 0.5) * 1000:.0f} ms, p95 {pct(all_lags, 0.95) * 1000:.0f} ms, "
              f"p99 {pct(all_lags, 0.99) * 1000:.0f} ms")  # fmt: skip
    for r in slow:
        print(f"  slow client: {r['messages']} messages, {r['received']:,} updates (coalesced), "
              f"p50 lag {pct(r['lags'], 0.5) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
