"""Faults on the real servers, counted: what devices had acknowledged, what was stored, dead-lettered
and lost. Writes the table of docs/reliability.md (`fleet bench reliability --write`).

Each scenario runs on a private stack (Mosquitto, PostgreSQL + TimescaleDB, Redis) in a temporary
folder, with `fleet gateway` and `fleet ingest` as their own processes and paho devices publishing
numbered reports at QoS 1 (the test suite's harness, tests/integration/fleet_harness.py). A report
is *accepted* when the broker acknowledged it (PUBACK); every accepted report has its own device
time, so `lost = accepted - stored (distinct) - dead-lettered`.

    .venv/bin/python bench/reliability.py                 # print the table
    .venv/bin/python bench/reliability.py --write         # and rewrite docs/reliability.md's table
    .venv/bin/python bench/reliability.py --only restart  # scenarios whose name contains "restart"
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path and bench/ingest.py would hide the package; the
# suite's harness (tests/integration) is the one way services and devices are run here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from fleet_harness import (  # noqa: E402
    DeviceFeed,
    device_client,
    publish_all,
    register,
    retire_gateways,
    spawn_service,
    stop_service,
    stored_counts,
    wait_for,
    wait_gateway_connected,
)

from ingest.migrate import migrate  # noqa: E402
from kernel.endpoints import Endpoints  # noqa: E402
from localstack import Stack, ensure_installed, free_ports  # noqa: E402
from localstack.mosquitto import AUTOSAVE_INTERVAL_S  # noqa: E402

DEVICES = 10
RATE = 100.0  # reports per second per device
RECONNECT_S = 0.02  # devices come back at once
BEGIN, END = "<!-- reliability table: begin -->", "<!-- reliability table: end -->"


@dataclass(frozen=True, slots=True)
class Row:
    fault: str
    how: str
    accepted: int
    stored: int
    dead: int

    @property
    def lost(self) -> int:
        return self.accepted - self.stored - self.dead


@dataclass
class Bench:
    stack: Stack
    endpoints: Endpoints
    logs: Path

    def fresh(self) -> None:
        self.stack.up()
        with psycopg.connect(self.endpoints.database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE telemetry, dead_letters, devices")
        client = redis.Redis.from_url(self.endpoints.redis_url)
        client.flushdb()
        client.close()

    def down(self, name: str, sig: signal.Signals) -> None:
        """Stop one server with `sig` and start it again on the same port and data."""
        pid = self.stack.status()[name].pid
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)
        wait_for(lambda: not self.stack.status()[name].running, 30, f"{name} stopped")
        self.stack.up()

    @contextmanager
    def pipeline(self, instance: str, *gateway_args: str) -> Iterator[Controls]:
        """A gateway and a worker as processes, and the means to freeze or stop the gateway."""
        controls = Controls(self, instance, gateway_args)
        worker = spawn_service("ingest", self.endpoints, instance, self.logs)
        try:
            controls.start()
            yield controls
        finally:
            controls.thaw()
            stop_service(worker)
            controls.stop()
            retire_gateways(self.endpoints, [instance])

    def settle(self, prefix: str, accepted: int, stall_s: float = 10.0) -> tuple[int, int]:
        """(stored distinct, dead-lettered) once the counts stop moving."""
        last, since = (-1, -1), time.monotonic()
        while time.monotonic() - since < stall_s:
            now = (stored_counts(self.endpoints.database_url, prefix)[1], self.dead(prefix))
            if now != last:
                last, since = now, time.monotonic()
            if sum(now) >= accepted:
                time.sleep(0.5)
                return stored_counts(self.endpoints.database_url, prefix)[1], self.dead(prefix)
            time.sleep(0.2)
        return last

    def dead(self, prefix: str) -> int:
        with psycopg.connect(self.endpoints.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM dead_letters WHERE device_id LIKE %s", (prefix + "%",)).fetchone()
        return int(row[0]) if row else 0


@dataclass
class Controls:
    bench: Bench
    instance: str
    args: tuple[str, ...]
    gateway: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    starts: int = 0

    def start(self) -> None:
        self.gateway = spawn_service("gateway", self.bench.endpoints, self.instance, self.bench.logs, *self.args)
        self.starts += 1
        wait_gateway_connected(self.bench.logs, self.instance, times=self.starts)

    def stop(self) -> None:
        if self.gateway is not None:
            stop_service(self.gateway)
            self.gateway = None

    def freeze(self) -> None:
        """SIGSTOP: the process stands still, but its socket still takes what the broker sends."""
        assert self.gateway is not None
        self.gateway.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.gateway is not None:
            self.gateway.send_signal(signal.SIGCONT)
        self.frozen = False


def broker_restart(bench: Bench, *, shared: bool, frozen: bool) -> Row:
    prefix = f"rs{int(shared)}{int(frozen)}-"
    creds = register(bench.endpoints, [f"{prefix}{i}" for i in range(DEVICES)])
    with bench.pipeline(prefix.rstrip("-"), *(["--shared"] if shared else [])) as gateway:
        feed = DeviceFeed(bench.endpoints, creds, rate=RATE, reconnect_s=RECONNECT_S).start()
        try:
            time.sleep(2.0)
            if frozen:
                gateway.freeze()
            bench.down("mqtt", signal.SIGTERM)
            time.sleep(1.0)
            gateway.thaw()
            time.sleep(2.0)
        finally:
            feed.stop()
        stored, dead = bench.settle(prefix, feed.accepted)
    mode = "shared subscription (`--shared`)" if shared else "plain subscription (one gateway, the default)"
    how = (f"SIGTERM + start under load ({DEVICES} devices × {RATE:g}/s, back after {RECONNECT_S * 1000:g} ms); "
           f"{mode}; gateway {'frozen (SIGSTOP) over the restart and 1 s after' if frozen else 'running'}")  # fmt: skip
    return Row("broker restart", how, feed.accepted, stored, dead)


def broker_kill(bench: Bench, *, away_s: float) -> Row:
    prefix = f"k9{int(away_s)}-"
    creds = register(bench.endpoints, [f"{prefix}{i}" for i in range(DEVICES)])
    time.sleep(AUTOSAVE_INTERVAL_S + 1)  # the devices' and the gateway's sessions are on disk
    with bench.pipeline(prefix.rstrip("-")) as gateway:
        time.sleep(AUTOSAVE_INTERVAL_S + 1)
        feed = DeviceFeed(bench.endpoints, creds, rate=RATE, reconnect_s=RECONNECT_S).start()
        try:
            time.sleep(2.0)
            if away_s:
                gateway.stop()
                time.sleep(away_s)
            bench.down("mqtt", signal.SIGKILL)
            if away_s:
                gateway.start()
            time.sleep(2.0)
        finally:
            feed.stop()
        stored, dead = bench.settle(prefix, feed.accepted)
    gateway = f"gateway stopped for the {away_s:g} s before the kill" if away_s else "gateway keeping up"
    how = (
        f"`kill -9` + start under load ({DEVICES} devices × {RATE:g}/s), autosave every "
        f"{AUTOSAVE_INTERVAL_S} s; {gateway}"
    )
    return Row("broker killed (SIGKILL)", how, feed.accepted, stored, dead)


def poison_record(bench: Bench) -> Row:
    """Each device's 10th report carries a fault code with NUL, which PostgreSQL refuses (if the
    decoders let it through: then ingest splits the batch)."""
    prefix = "nul-"
    creds = register(bench.endpoints, [f"{prefix}{i}" for i in range(DEVICES)])
    accepted = 0
    with bench.pipeline("nul"):
        for device_id, password in creds.items():
            with device_client(bench.endpoints, device_id, password) as client:
                messages = []
                for k in range(50):
                    body = {"v": 1, "ts": f"2026-01-01T00:00:{k:02d}Z", "lat": 52.5, "lon": 13.4, "fix": 3}
                    if k == 10:
                        body["faults"] = ["E\u0000"]
                    messages.append((f"fleet/{device_id}/telemetry", orjson.dumps(body)))
                publish_all(client, messages)
                accepted += len(messages)
        stored, dead = bench.settle(prefix, accepted)
    how = f'{DEVICES} devices × 50 reports, the 10th with `faults: ["E\\u0000"]`'
    return Row("a record the database refuses", how, accepted, stored, dead)


def registration_race(bench: Bench, devices: int = 100) -> Row:
    prefix = "new-"
    accepted = 0
    with bench.pipeline("new"):
        for i in range(devices):
            device_id = f"{prefix}{i}"
            creds = register(bench.endpoints, [device_id])
            with device_client(bench.endpoints, device_id, creds[device_id]) as client:
                body = {"v": 1, "ts": "2026-01-01T00:00:00Z", "lat": 52.5, "lon": 13.4}
                publish_all(client, [(f"fleet/{device_id}/telemetry", orjson.dumps(body))])
                accepted += 1
        stored, dead = bench.settle(prefix, accepted)
    how = f"{devices} devices, each registered, connected and publishing at once"
    return Row("a device publishing at once after `fleet devices add`", how, accepted, stored, dead)


SCENARIOS: dict[str, Callable[[Bench], Row]] = {
    "restart-shared-frozen": lambda b: broker_restart(b, shared=True, frozen=True),
    "restart-plain-frozen": lambda b: broker_restart(b, shared=False, frozen=True),
    "restart-shared-running": lambda b: broker_restart(b, shared=True, frozen=False),
    "restart-plain-running": lambda b: broker_restart(b, shared=False, frozen=False),
    "kill9-running": lambda b: broker_kill(b, away_s=0),
    "kill9-gateway-away": lambda b: broker_kill(b, away_s=3),
    "poison-nul": poison_record,
    "registration-race": registration_race,
}


def table(rows: list[tuple[str, Row]]) -> str:
    lines = ["| fault | how it was tried | accepted | stored | dead-lettered | lost |", "|---|---|--:|--:|--:|--:|"]
    for _name, r in rows:
        lines.append(f"| {r.fault} | {r.how} | {r.accepted:,} | {r.stored:,} | {r.dead:,} | {r.lost:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/reliability.md")
    args = parser.parse_args()
    ensure_installed(log=lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="fleet-reliability-") as tmp:
        stack = Stack(Path(tmp) / "state", free_ports())
        try:
            urls = stack.up()
            migrate(urls.database_url)
            endpoints = Endpoints(urls.database_url, urls.mqtt_url, urls.redis_url, urls.mqtt_admin_url,
                                  local_stack=True)  # fmt: skip
            logs = Path(tmp) / "logs"
            logs.mkdir()
            bench = Bench(stack, endpoints, logs)
            rows = []
            for name, scenario in SCENARIOS.items():
                if args.only in name:
                    bench.fresh()
                    row = scenario(bench)
                    print(f"{name}: accepted {row.accepted}, stored {row.stored}, dead {row.dead}, lost {row.lost}",
                          flush=True)  # fmt: skip
                    rows.append((name, row))
        finally:
            stack.down()
    text = table(rows)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "reliability.md"
        body = doc.read_text()
        new = re.sub(f"{re.escape(BEGIN)}.*{re.escape(END)}", lambda _m: f"{BEGIN}\n{text}\n{END}", body, flags=re.S)
        doc.write_text(new)
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
