"""The map API's speed on a live fleet: the whole fleet, and a bounding box over 1 % of the city.

    .venv/bin/python bench/api.py [--vehicles 100000] [--requests 60] [--boxes 300] [--updates-per-s 10000]

A private stack (or FLEET_DATABASE_URL / FLEET_REDIS_URL / FLEET_MQTT_URL servers: then nothing is
truncated, and only this run's vehicles are written) gets `--vehicles` live states in central Berlin
through ingest's own Lua merge; `fleet api` runs as its own process (uvicorn, one worker) under the
API's accounts. While a writer thread keeps changing `--updates-per-s` vehicles a second (a fleet
reporting every 10 s), one keep-alive client times:

- `GET /v1/vehicles?limit=100000`: the whole live fleet (body read to its end, not parsed);
- `GET /v1/vehicles?bbox=...`: a box of 1 % of the city's area (a tenth of its width and of its
  height) at a random place each time.

Targets (issue #14): whole fleet p95 <= 150 ms, box p95 <= 20 ms. Times are client wall times from
request to the last byte, after a warm-up; p50/p95/max and the body sizes are printed.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

import psycopg  # noqa: E402
import redis  # noqa: E402
from benchkit import start_stack  # noqa: E402

from api.keys import Role  # noqa: E402
from api.keystore import Actor, create_key  # noqa: E402
from kernel.livestate import LiveState  # noqa: E402

CITY = (13.30, 52.45, 13.50, 52.57)  # lon/lat box, about 13.6 km x 13.3 km
TARGETS = {"fleet": 0.150, "box": 0.020}


def state(device_id: str, rng: random.Random, now: float) -> dict[str, object]:
    x0, y0, x1, y1 = CITY
    return {"id": device_id, "ts": now, "seen": now, "source": "json", "lon": rng.uniform(x0, x1),
            "lat": rng.uniform(y0, y1), "speed_kmh": rng.choice([0.0, 0.0, 14.5]), "heading_deg": rng.uniform(0, 360),
            "battery_pct": rng.uniform(5, 100), "odometer_m": rng.uniform(0, 5e6), "locked": rng.random() < 0.7,
            "fix": 3, "satellites": 9, "hdop": 0.9, "accuracy_m": 4.0, "faults": []}  # fmt: skip


def fill(redis_url: str, ids: list[str], rng: random.Random) -> None:
    client = redis.Redis.from_url(redis_url)
    live = LiveState(client)
    now = time.time()
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        live.apply({d: state(d, rng, now) for d in chunk})
        client.hset("fleet:online", mapping={d: "1" for d in chunk})
    client.close()


def writer(redis_url: str, ids: list[str], per_s: int, stop: Any) -> None:
    """`per_s` vehicles a second get a new state, in 10 batches a second (ingest's shape). A process
    of its own: in the client's process it would take the GIL from the timed requests."""
    if per_s <= 0:
        return
    client = redis.Redis.from_url(redis_url)
    live, rng = LiveState(client), random.Random(7)
    batch = max(1, per_s // 10)
    while not stop.is_set():
        started = time.monotonic()
        now = time.time()
        live.apply({d: state(d, rng, now) for d in rng.sample(ids, batch)})
        stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))
    client.close()


def serve(config_env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    code = (
        "import os, uvicorn\n"
        "from api.app import create_app\nfrom api.deps import ApiConfig\n"
        "config = ApiConfig(os.environ['BENCH_DB'], os.environ['BENCH_REDIS'])\n"
        f"uvicorn.run(create_app(config), host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", code], env=config_env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=_HERE.parent)  # fmt: skip


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed, len(body)


def report(name: str, times: list[float], sizes: list[int]) -> bool:
    times = sorted(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    ok = p95 <= TARGETS[name]
    print(f"{name:6s} n={len(times):4d}  p50 {statistics.median(times) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"
          f"  max {times[-1] * 1000:7.1f} ms  body {statistics.median(sizes) / 1e6:6.2f} MB"
          f"  target p95 <= {TARGETS[name] * 1000:.0f} ms: {'met' if ok else 'NOT met'}")  # fmt: skip
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60, help="whole-fleet requests timed")
    parser.add_argument("--boxes", type=int, default=300, help="bounding-box requests timed")
    parser.add_argument("--updates-per-s", type=int, default=10_000, help="live states changed meanwhile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (API log, stack)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-api-"))
    external = all(os.environ.get(k) for k in ("FLEET_DATABASE_URL", "FLEET_REDIS_URL", "FLEET_MQTT_URL"))
    stack = None
    if external:
        db_url, redis_url = os.environ["FLEET_DATABASE_URL"], os.environ["FLEET_REDIS_URL"]
        api_db, api_redis = db_url, redis_url
    else:
        stack, urls = start_stack(workdir)
        db_url, redis_url = urls.database_url, urls.redis_url
        api_db, api_redis = urls.services["api"].database_url, urls.services["api"].redis_url
    prefix = f"ba{random.Random().randrange(36**4):04x}-"
    ids = [f"{prefix}{i:06d}" for i in range(args.vehicles)]
    rng = random.Random(args.seed)
    stop = multiprocessing.get_context("fork").Event()
    proc = None
    try:
        started = time.monotonic()
        fill(redis_url, ids, rng)
        print(f"{len(ids):,} live states written in {time.monotonic() - started:.1f} s")
        with psycopg.connect(db_url) as conn:
            _, token = create_key(conn, "bench", Role.VIEWER, Actor(None, "bench", None))
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = serve({**os.environ, "BENCH_DB": api_db, "BENCH_REDIS": api_redis}, port, workdir / "api.log")
        headers = {"Authorization": f"Bearer {token}"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                timed_get(conn, "/v1/vehicles?limit=1", headers)
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the API did not start (log: {workdir / 'api.log'})") from None
                time.sleep(0.2)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        writing = multiprocessing.get_context("fork").Process(
            target=writer, args=(redis_url, ids, args.updates_per_s, stop), daemon=True
        )
        writing.start()
        for _ in range(5):  # warm-up: the first snapshot is built, then only changes are
            timed_get(conn, "/v1/vehicles?limit=100000", headers)
            time.sleep(0.3)
        fleet = [timed_get(conn, "/v1/vehicles?limit=100000", headers) for _ in range(args.requests)]
        x0, y0, x1, y1 = CITY
        w, h = (x1 - x0) / 10, (y1 - y0) / 10
        boxes = []
        for _ in range(args.boxes):
            bx, by = rng.uniform(x0, x1 - w), rng.uniform(y0, y1 - h)
            boxes.append(timed_get(conn, f"/v1/vehicles?bbox={bx:.6f},{by:.6f},{bx + w:.6f},{by + h:.6f}", headers))
        stop.set()
        writing.join()
        print(f"machine: {os.cpu_count()} cores; {args.updates_per_s:,} states changed a second meanwhile")
        ok = report("fleet", [t for t, _ in fleet], [n for _, n in fleet])
        ok &= report("box", [t for t, _ in boxes], [n for _, n in boxes])
        return 0 if ok else 1
    finally:
        stop.set()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if stack is not None:
            stack.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif external:
            client = redis.Redis.from_url(redis_url)
            for i in range(0, len(ids), 5000):
                client.hdel("fleet:vehicles", *ids[i : i + 5000])
                client.hdel("fleet:online", *ids[i : i + 5000])
            client.close()


if __name__ == "__main__":
    sys.exit(main())
