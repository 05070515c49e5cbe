"""Hostile input, long run: at least 100,000 generated messages through the real broker, gateway,
stream and ingest, between good records of other devices (`fleet bench hostile`).

The suite's short run (tests/integration/test_hostile_pipeline.py) checks each hostile message
against the gateway's pure intake. Here the count is too large for that (the per-device dead-letter
budget depends on the minute each message arrives), so the run is checked by the pipeline's own
books: every message published reached the gateway; every record the gateway accepted was stored or
folded as a duplicate; nothing was refused by the database; every good record is stored exactly once;
every service still runs. It prints the figures for docs/reliability.md.

    .venv/bin/python bench/hostile.py                    # 100,000 hostile messages
    .venv/bin/python bench/hostile.py --messages 20000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]
from fleet_harness import (  # noqa: E402
    counters,
    device_client,
    ingest_backlog,
    publish_all,
    register,
    scalar,
    services,
    wait_for,
)
from hostile import messages  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from ingest.migrate import migrate  # noqa: E402
from kernel.endpoints import Endpoints  # noqa: E402
from localstack import Stack, ensure_installed, free_ports  # noqa: E402

HOSTILE_DEVICES = 20
GOOD_DEVICES = 2
POOL_DEVICE = "hb-pool"
CHUNK = 500  # messages published before waiting for their acknowledgements


def generate(device_id: str, now: datetime, count: int) -> list[tuple[str, bytes]]:
    """`count` messages drawn by hypothesis: each test case is a list, and the cases are collected."""
    found: list[tuple[str, bytes]] = []

    @settings(max_examples=500, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(messages(device_id, now))
    def collect(batch: list[tuple[str, bytes]]) -> None:
        found.extend(batch)

    while len(found) < count:
        collect()
    return found[:count]


def replay(pool: list[tuple[str, bytes]], device_id: str, count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """`count` messages for `device_id` from the generated pool, half of them mutated (bytes flipped,
    inserted or cut): hypothesis draws a few thousand cases a minute here, too few for 100,000."""
    out = []
    for k in range(count):
        topic, payload = pool[k % len(pool)]
        if payload and rng.random() < 0.5:
            data = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(data))
                op = rng.randrange(3)
                if op == 0:
                    data[i] = rng.randrange(256)
                elif op == 1:
                    data.insert(i, rng.choice(b'\x00"[{\\$,\n\xff'))
                else:
                    del data[i:]
                    if not data:
                        break
            payload = bytes(data)
        out.append((topic.replace(POOL_DEVICE, device_id), payload))
    return out


def run(endpoints: Endpoints, total: int, pool: int) -> dict[str, object]:
    now = datetime.now(UTC)
    bad_ids = [f"hb-bad-{i:02d}" for i in range(HOSTILE_DEVICES)]
    good_ids = [f"hb-good-{i}" for i in range(GOOD_DEVICES)]
    creds = register(endpoints, bad_ids + good_ids)
    started = time.monotonic()
    pool = generate(POOL_DEVICE, now, pool)
    plan = {d: replay(pool, d, total // HOSTILE_DEVICES, random.Random(d)) for d in bad_ids}
    generated_s = time.monotonic() - started
    base = now - timedelta(hours=3)
    good_sent = 0
    with services(endpoints) as running:
        before = counters(endpoints)
        started = time.monotonic()
        for device in bad_ids:
            with device_client(endpoints, device, creds[device]) as bad, \
                 device_client(endpoints, good_ids[0], creds[good_ids[0]]) as good:  # fmt: skip
                sent = plan[device]
                for i in range(0, len(sent), CHUNK):
                    publish_all(bad, sent[i : i + CHUNK])
                    body = {"v": 1, "ts": (base + timedelta(milliseconds=good_sent)).isoformat(), "lat": 1, "lon": 2}
                    publish_all(good, [(f"fleet/{good_ids[0]}/telemetry", orjson.dumps(body))])
                    good_sent += 1
        published = sum(len(p) for p in plan.values()) + good_sent
        wait_for(lambda: counters(endpoints)["received"] - before["received"] >= published, 600, "all at the gateway")
        wait_for(lambda: not ingest_backlog(endpoints), 600, "the stream drained")
        elapsed = time.monotonic() - started
        alive = all(t.is_alive() for t in running.threads) and running.gateway.wait_connected(5)
    after = counters(endpoints)
    delta = Counter({k: after[k] - before[k] for k in after})
    stored_good = scalar(endpoints.database_url, "SELECT count(DISTINCT time) FROM telemetry WHERE device_id = %s",
                         good_ids[0])  # fmt: skip
    rows_good = scalar(endpoints.database_url, "SELECT count(*) FROM telemetry WHERE device_id = %s", good_ids[0])
    refused = scalar(endpoints.database_url, "SELECT count(*) FROM dead_letters WHERE reason = 'db_refused'")
    dead_rows = scalar(endpoints.database_url, "SELECT count(*) FROM dead_letters WHERE device_id LIKE 'hb-bad-%%'")
    return {
        "published": published, "pool": len(pool), "received": delta["received"], "generated_s": generated_s,
        "elapsed_s": elapsed,
        "records": delta["records"], "stored": delta["stored"], "duplicates": delta["duplicates"],
        "dead_letters": sum(v for k, v in delta.items() if k.startswith("dead:")), "dead_letter_rows": dead_rows,
        "dead_dropped": sum(v for k, v in delta.items() if k.startswith("dead_dropped:")),
        "ignored": sum(v for k, v in delta.items() if k.startswith("ignored:")),
        "reasons": {k: v for k, v in sorted(delta.items()) if k.startswith(("dead:", "ignored:"))},
        "db_refused": refused, "good_sent": good_sent, "good_stored": stored_good, "good_rows": rows_good,
        "services_alive": alive,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=1500, help="distinct messages drawn by hypothesis")
    args = parser.parse_args()
    ensure_installed(log=lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="fleet-hostile-") as tmp:
        stack = Stack(Path(tmp) / "state", free_ports())
        try:
            urls = stack.up()
            migrate(urls.database_url)
            endpoints = Endpoints(urls.database_url, urls.mqtt_url, urls.redis_url, urls.mqtt_admin_url,
                                  local_stack=True, services=urls.services)  # fmt: skip
            result = run(endpoints, args.messages, args.pool)
        finally:
            stack.down()
    for name, value in result.items():
        print(f"{name:>18}: {value}")
    ok = (
        result["received"] == result["published"]
        and result["records"] == result["stored"] + result["duplicates"]
        and result["db_refused"] == 0
        and result["good_stored"] == result["good_rows"] == result["good_sent"]
        and result["services_alive"]
    )
    print("verdict:", "every message accounted for, nothing lost" if ok else "ACCOUNTING FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
