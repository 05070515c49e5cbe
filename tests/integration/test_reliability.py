"""Nothing lost, nothing twice, on the real servers while they fail: an ingest worker killed with
SIGKILL in the middle of a batch, PostgreSQL stopped for 30 s, the broker restarted. Devices keep
publishing at QoS 1 throughout; afterwards every report the broker acknowledged is stored exactly once.

The gateway and the ingest workers run as their own processes (`fleet gateway`, `fleet ingest`), as
in production. This module stops and restarts servers, so it runs its own stack in a temporary
folder instead of the session's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import stack_endpoints
from fleet_harness import (
    STREAM,
    DeviceFeed,
    register,
    retire_gateways,
    spawn_service,
    stop_service,
    stored_counts,
    wait_for,
    wait_gateway_connected,
)

from ingest.migrate import migrate
from ingest.service import IngestWorker
from kernel.endpoints import Endpoints
from localstack import Stack, ensure_installed, free_ports

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0  # how long PostgreSQL stays down
KILL_ATTEMPTS = 5  # tries to catch a worker with a batch in hand


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Endpoints]]:
    ensure_installed(log=lambda _msg: None)
    stack = Stack(tmp_path_factory.mktemp("reliability") / "state", free_ports())
    try:
        urls = stack.up()
        migrate(urls.database_url)
        yield stack, stack_endpoints(urls)
    finally:
        stack.down()


@pytest.fixture
def fresh(own_stack: tuple[Stack, Endpoints]) -> tuple[Stack, Endpoints]:
    """All three servers up (a failed test may have left one down), empty tables and Redis."""
    stack, endpoints = own_stack
    stack.up()
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, dead_letters, devices")
    client = redis.Redis.from_url(endpoints.redis_url)
    client.flushdb()
    client.close()
    return stack, endpoints


def _writing(database_url: str, consumer: str) -> bool:
    """True while the worker's database session is inside a transaction (COPY or merge under way)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state IN ('active', 'idle in transaction')",
            (f"fleet {consumer}",),
        ).fetchone()
    return bool(row and row[0])


def _pending(redis_url: str, consumer: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        summary = client.xpending(STREAM, "ingest")
        return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer.encode())
    finally:
        client.close()


@contextmanager
def _server_down(stack: Stack, name: str, sig: signal.Signals) -> Iterator[None]:
    """Stop one server with `sig`; start it again (same port, same data) on leaving."""
    pid = stack.status()[name].pid
    assert pid is not None, f"{name} is not running"
    os.kill(pid, sig)
    wait_for(lambda: not stack.status()[name].running, 30, f"{name} stopped")
    try:
        yield
    finally:
        stack.up()


def _all_stored_once(endpoints: Endpoints, prefix: str, feed: DeviceFeed, timeout: float = 60.0) -> None:
    assert feed.accepted == feed.published > 0
    wait_for(lambda: stored_counts(endpoints.database_url, prefix)[1] >= feed.accepted, timeout,
             f"{feed.accepted} reports stored")  # fmt: skip
    time.sleep(0.5)  # anything still arriving would be a duplicate or a stray: let it show
    rows, distinct = stored_counts(endpoints.database_url, prefix)
    assert (rows, distinct) == (feed.accepted, feed.accepted)


def test_an_ingest_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice(
    fresh: tuple[Stack, Endpoints], tmp_path: Path
) -> None:
    _stack, endpoints = fresh
    creds = register(endpoints, [f"k9-{i}" for i in range(8)])
    gateway = spawn_service("gateway", endpoints, "k9", tmp_path)
    stop = threading.Event()
    own = endpoints.for_service("ingest")
    replacement = IngestWorker(own.redis_url, own.database_url, stream_key=STREAM, group="ingest",
                               consumer="ingest-b", claim_idle_ms=300)  # fmt: skip
    thread = threading.Thread(target=replacement.run, args=(stop,), name="ingest-b")
    try:
        wait_gateway_connected(tmp_path, "k9")
        feed = DeviceFeed(endpoints, creds, rate=300).start()
        left_pending = 0
        try:
            for _attempt in range(KILL_ATTEMPTS):
                worker = spawn_service("ingest", endpoints, "a", tmp_path)
                deadline = time.monotonic() + 15
                while not _writing(endpoints.database_url, "ingest-a"):
                    assert time.monotonic() < deadline, "worker a never wrote a batch"
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                left_pending = _pending(endpoints.redis_url, "ingest-a")
                if left_pending:
                    break
            thread.start()  # another worker takes over what the dead one left pending
            time.sleep(1.0)  # and keeps up with the devices for a while
        finally:
            feed.stop()
        assert left_pending > 0, f"no kill in {KILL_ATTEMPTS} caught worker a with unacknowledged entries"
        _all_stored_once(endpoints, "k9-", feed)
        assert replacement.stats.claimed >= left_pending
        assert _pending(endpoints.redis_url, "ingest-a") == 0
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(15)
        stop_service(gateway)
        retire_gateways(endpoints, ["k9"])


def test_thirty_seconds_without_postgresql_lose_nothing(fresh: tuple[Stack, Endpoints], tmp_path: Path) -> None:
    stack, endpoints = fresh
    creds = register(endpoints, [f"pg-{i}" for i in range(4)])
    gateway = spawn_service("gateway", endpoints, "pg", tmp_path)
    worker = spawn_service("ingest", endpoints, "pg", tmp_path)
    stream = redis.Redis.from_url(endpoints.redis_url)
    try:
        wait_gateway_connected(tmp_path, "pg")
        feed = DeviceFeed(endpoints, creds, rate=50).start()
        try:
            wait_for(lambda: stored_counts(endpoints.database_url, "pg-")[0] > 0, 15, "first rows")
            with _server_down(stack, "postgres", signal.SIGINT):
                time.sleep(OUTAGE_S / 2)
                backlog = stream.xlen(STREAM)
                time.sleep(OUTAGE_S / 2)
        finally:
            feed.stop()
        assert backlog > 0, "reports arriving during the outage should wait in the Redis stream"
        _all_stored_once(endpoints, "pg-", feed)
        assert worker.poll() is None, "the ingest worker should ride out the outage"
    finally:
        stream.close()
        stop_service(worker)
        stop_service(gateway)
        retire_gateways(endpoints, ["pg"])


def test_a_broker_restart_loses_nothing(fresh: tuple[Stack, Endpoints], tmp_path: Path) -> None:
    stack, endpoints = fresh
    creds = register(endpoints, [f"mq-{i}" for i in range(4)])
    gateway = spawn_service("gateway", endpoints, "mq", tmp_path)
    worker = spawn_service("ingest", endpoints, "mq", tmp_path)
    try:
        wait_gateway_connected(tmp_path, "mq")
        feed = DeviceFeed(endpoints, creds, rate=200).start()
        try:
            time.sleep(1.5)
            with _server_down(stack, "mqtt", signal.SIGTERM):  # it saves sessions and queues to disk
                pass
            wait_gateway_connected(tmp_path, "mq", times=2)
            time.sleep(1.5)
        finally:
            feed.stop()
        _all_stored_once(endpoints, "mq-", feed)
    finally:
        stop_service(worker)
        stop_service(gateway)
        retire_gateways(endpoints, ["mq"])


def test_a_broker_restart_with_devices_back_before_the_gateway_loses_nothing(
    fresh: tuple[Stack, Endpoints], tmp_path: Path
) -> None:
    """Devices reconnect at once (20 ms) and publish while the gateway is still away (frozen with
    SIGSTOP over the restart, so it comes back last every time): their reports wait in the gateway's
    persistent session, whose plain subscription Mosquitto restores from its persistence file. With
    `--shared` this loses every report published before the gateway resubscribes."""
    stack, endpoints = fresh
    creds = register(endpoints, [f"rs-{i}" for i in range(10)])
    gateway = spawn_service("gateway", endpoints, "rs", tmp_path)
    worker = spawn_service("ingest", endpoints, "rs", tmp_path)
    try:
        wait_gateway_connected(tmp_path, "rs")
        feed = DeviceFeed(endpoints, creds, rate=100, reconnect_s=0.02).start()
        try:
            time.sleep(1.0)
            gateway.send_signal(signal.SIGSTOP)
            try:
                with _server_down(stack, "mqtt", signal.SIGTERM):
                    pass
                during = feed.accepted
                time.sleep(1.0)  # devices are back and publishing; the gateway is not
                assert feed.accepted > during + 500, "devices should publish while the gateway is away"
            finally:
                gateway.send_signal(signal.SIGCONT)
            wait_gateway_connected(tmp_path, "rs", times=2)
            time.sleep(0.5)
        finally:
            feed.stop()
        _all_stored_once(endpoints, "rs-", feed)
    finally:
        stop_service(worker)
        stop_service(gateway)
        retire_gateways(endpoints, ["rs"])


def test_a_broker_killed_under_load_loses_nothing_the_gateway_had_read(
    fresh: tuple[Stack, Endpoints], tmp_path: Path
) -> None:
    """`kill -9` of Mosquitto while the gateway keeps up, devices back at once: the broker comes back
    from its last snapshot (forced here with SIGUSR1 so that it holds the sessions, instead of waiting
    for the 10 s autosave), which does not know the messages it had delivered to the gateway and not
    yet had acknowledged. The gateway stores those it had read when the connection broke."""
    stack, endpoints = fresh
    creds = register(endpoints, [f"kb-{i}" for i in range(10)])
    gateway = spawn_service("gateway", endpoints, "kb", tmp_path)
    worker = spawn_service("ingest", endpoints, "kb", tmp_path)
    try:
        wait_gateway_connected(tmp_path, "kb")
        feed = DeviceFeed(endpoints, creds, rate=100, reconnect_s=0.02).start()
        try:
            time.sleep(0.5)
            pid = stack.status()["mqtt"].pid
            assert pid is not None
            os.kill(pid, signal.SIGUSR1)  # snapshot now: devices' and gateway's sessions on disk
            time.sleep(1.5)
            with _server_down(stack, "mqtt", signal.SIGKILL):
                pass
            wait_gateway_connected(tmp_path, "kb", times=2)
            time.sleep(1.0)
        finally:
            feed.stop()
        _all_stored_once(endpoints, "kb-", feed)
    finally:
        stop_service(worker)
        stop_service(gateway)
        retire_gateways(endpoints, ["kb"])
