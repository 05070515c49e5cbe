"""The benchmark's load: publisher processes that encode everything first and then publish at QoS 1,
and the bare `mosquitto_sub` baseline fed by the same publishers. See bench/ingest.py."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from kernel.mqtt_codec import DISCONNECT_PACKET, count_pubacks
from kernel.settings import MqttTarget
from simulators.wire import connect_packet, open_socket, publish_packet

STALL_S = 30.0  # no progress for this long: stop waiting and report what is missing
STEP_S = 0.01  # device time between one device's consecutive records

SampleCallback = Callable[[str, float, float], None]  # (device, ts of the first record, send time)


@dataclass(frozen=True, slots=True)
class Plan:
    prefix: str
    records: int
    batch: int
    qos: int
    devices: int
    publishers: int
    rate: float  # records/s over all publishers; 0 = as fast as it goes
    window: int
    sample_every: int
    t_base: float
    workload: str = "line"  # "line" (this module's straight lines) or a bench/fleet_workload.py fleet
    seed: int = 1

    @property
    def messages(self) -> int:
        return sum(-(-n // self.batch) for n in self.per_device())

    def per_device(self) -> list[int]:
        q, r = divmod(self.records, self.devices)
        return [q + (d < r) for d in range(self.devices)]

    def device(self, d: int) -> str:
        return f"{self.prefix}d{d:04d}"


@dataclass(slots=True)
class PubResult:
    messages: int
    acked: int
    first: float
    last: float
    cpu_s: float  # CPU of the publishing phase only (encoding came before the clock started)


# -- the publisher processes ------------------------------------------------------------------------
def _record(plan: Plan, d: int, k: int) -> dict[str, object]:
    return {"ts": plan.t_base + k * STEP_S, "lat": 52.5 + d * 1e-3 + k * 1e-6, "lon": 13.4 + k * 1e-6,
            "alt_m": 34.0, "speed_kmh": 15.0, "heading_deg": 90.0, "acc_m": 4.0, "fix": 3, "sats": 9,
            "hdop": 0.9, "battery_pct": 80.0, "odometer_m": 1000.0 + k, "locked": False}  # fmt: skip


def device_records(plan: Plan, d: int, count: int) -> list[dict[str, object]]:
    if plan.workload == "line":
        return [_record(plan, d, k) for k in range(count)]
    from fleet_workload import record, track

    tr = track(plan.workload, plan.seed, d, count)
    return [record(tr, k, plan.t_base) for k in range(count)]


def messages_for(plan: Plan, p: int) -> list[tuple[str, bytes, tuple[str, float]]]:
    """Publisher `p`'s messages, its devices interleaved; each with the (device, ts) of its first record."""
    counts = plan.per_device()
    queues = []
    for d in range(p, plan.devices, plan.publishers):
        dev, topic, out = plan.device(d), f"fleet/{plan.device(d)}/telemetry", []
        all_recs = device_records(plan, d, counts[d])
        for k0 in range(0, counts[d], plan.batch):
            recs = all_recs[k0 : k0 + plan.batch]
            body = {"v": 1, "id": dev, **recs[0]} if plan.batch == 1 else {"v": 1, "id": dev, "records": recs}
            out.append((topic, orjson.dumps(body), (dev, float(recs[0]["ts"]))))  # type: ignore[arg-type]
        queues.append(out)
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


def publisher(plan: Plan, p: int, mqtt_url: str, ready: mp.Event, go: mp.Event, samples: mp.Queue,
              results: mp.Queue) -> None:  # fmt: skip
    msgs = messages_for(plan, p)
    chunk = 100 if plan.rate else 200
    packets = [publish_packet(t, b, i % 65535 + 1) for i, (t, b, _) in enumerate(msgs)]
    chunks = [b"".join(packets[i : i + chunk]) for i in range(0, len(packets), chunk)]
    target = MqttTarget.parse(mqtt_url)
    if target.tls:  # a reader thread next to the writer: fine on TCP, not on one OpenSSL connection
        raise SystemExit("the benchmark's publishers speak plain MQTT: give an mqtt:// URL")
    sock = open_socket(target.host, target.port, None)
    sock.settimeout(None)
    sock.sendall(connect_packet(f"{plan.prefix}pub{p}", target.username, target.password, keepalive=600))
    if sock.recv(4)[:2] != b"\x20\x02":
        raise SystemExit(f"publisher {p}: broker refused the connection")
    acks = _AckCounter(sock)
    ready.set()
    go.wait()
    cpu0 = time.process_time()
    rate = plan.rate / plan.publishers
    first = time.time()
    start = time.perf_counter()
    for c, data in enumerate(chunks):
        sent = c * chunk
        if rate:
            ahead = start + sent * plan.batch / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        while sent - acks.count > plan.window and acks.error is None:
            time.sleep(0.0005)
        sock.sendall(data)
        if c % plan.sample_every == 0:
            samples.put((*msgs[sent][2], time.time()))
    deadline = time.monotonic() + 300
    while acks.count < len(msgs) and acks.error is None and time.monotonic() < deadline:
        time.sleep(0.002)
    last = time.time()
    sock.sendall(DISCONNECT_PACKET)
    sock.close()
    results.put((p, PubResult(len(msgs), acks.count, first, last, time.process_time() - cpu0)))


class _AckCounter:
    """Counts the PUBACKs (the only packets a QoS 1 publisher receives) with the one MQTT codec."""

    def __init__(self, sock: socket.socket) -> None:
        self.count = 0
        self.error: str | None = None
        self._sock = sock
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        pending = b""
        try:
            while data := self._sock.recv(1 << 16):
                pending += data
                count, used = count_pubacks(pending)
                pending = pending[used:]
                self.count += count
        except (OSError, ValueError) as exc:
            self.error = str(exc)


def publish(plan: Plan, mqtt_url: str, on_sample: SampleCallback | None = None) -> list[PubResult]:
    """Run the publisher processes: all encode first, then start together."""
    ctx = mp.get_context("spawn")
    go, samples, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    readies = [ctx.Event() for _ in range(plan.publishers)]
    procs = [ctx.Process(target=publisher, args=(plan, p, mqtt_url, readies[p], go, samples, results), daemon=True)
             for p in range(plan.publishers)]  # fmt: skip
    for proc in procs:
        proc.start()
    for ready, proc in zip(readies, procs, strict=True):
        while not ready.wait(0.5):
            if not proc.is_alive():
                raise SystemExit(f"publisher exited with code {proc.exitcode} before it was ready")
    go.set()
    out: dict[int, PubResult] = {}
    while len(out) < len(procs):
        while not samples.empty():  # always drained: a publisher cannot exit while its queue is full
            sample = samples.get()
            if on_sample is not None:
                on_sample(*sample)
        try:
            p, result = results.get(timeout=0.05)
            out[p] = result
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs) and results.empty():
                raise SystemExit("a publisher died without a result") from None
    while not samples.empty():
        sample = samples.get()
        if on_sample is not None:
            on_sample(*sample)
    for proc in procs:
        proc.join(10)
    return [out[p] for p in sorted(out)]


def publish_once(mqtt_url: str, client_id: str, topic: str, payload: bytes) -> None:
    """One QoS 1 message, waiting for its PUBACK."""
    target = MqttTarget.parse(mqtt_url)
    with open_socket(target.host, target.port, target.ssl_context(), timeout=10) as sock:
        sock.sendall(connect_packet(client_id, target.username, target.password, keepalive=60))
        if sock.recv(4)[:2] != b"\x20\x02":
            raise SystemExit("the broker refused the benchmark's connection")
        sock.sendall(publish_packet(topic, payload, 1))
        if sock.recv(4)[:1] != b"\x40":
            raise SystemExit("no PUBACK for the probe message")
        sock.sendall(DISCONNECT_PACKET)


def baseline(plan: Plan, mqtt_url: str, *, drain: bool = False) -> tuple[float, int]:
    """(records/s, messages received) for a bare mosquitto_sub fed by the same publisher.

    mosquitto_sub prints each message's length (`-F %l`) and flushes per message; a reader thread
    counts the lines and notes the time the last expected one arrives. With `drain`, the messages
    are published while its persistent session is offline and the clock starts when it comes back.
    """
    target = MqttTarget.parse(mqtt_url)
    client_id = f"{plan.prefix}sub"
    command = ["mosquitto_sub", "-h", target.host, "-p", str(target.port), "-u", target.username or "",
               "-P", target.password or "", "-q", str(plan.qos), "-t", "fleet/+/telemetry", "-F", "%l",
               "-i", client_id, *(["-c"] if drain else [])]  # fmt: skip
    sub = subprocess.Popen(command, stdout=subprocess.PIPE)
    count = _LineCounter(sub, plan.messages)
    try:
        while not count.probes:  # the subscription is in place once a probe comes through
            publish_once(mqtt_url, f"{plan.prefix}probe", f"fleet/{plan.prefix}probe/telemetry", b"p")
            count.changed.wait(0.5)
        if drain:
            sub.terminate()
            sub.wait()
        results = publish(plan, mqtt_url)
        start = min(r.first for r in results)
        if drain:
            start = time.time()
            sub = subprocess.Popen(command, stdout=subprocess.PIPE)
            count = _LineCounter(sub, plan.messages)
        count.complete.wait(STALL_S)
    finally:
        sub.terminate()
        sub.wait()
        if drain:
            discard_session(mqtt_url, client_id)
    done = count.done_at or time.time()
    return count.messages * plan.batch / (done - start), count.messages


def discard_session(mqtt_url: str, client_id: str) -> None:
    """Connect once with a clean session: the broker drops the persistent one of that client id."""
    target = MqttTarget.parse(mqtt_url)
    with open_socket(target.host, target.port, target.ssl_context(), timeout=10) as sock:
        sock.sendall(connect_packet(client_id, target.username, target.password, keepalive=60))
        sock.recv(4)
        sock.sendall(DISCONNECT_PACKET)


class _LineCounter:
    """Counts mosquitto_sub's output lines: `1` for a probe, a payload length for a message."""

    def __init__(self, sub: subprocess.Popen[bytes], expected: int) -> None:
        self.probes = 0
        self.messages = 0
        self.done_at: float | None = None
        self.changed = threading.Event()
        self.complete = threading.Event()
        self._expected = expected
        threading.Thread(target=self._run, args=(sub,), daemon=True).start()

    def _run(self, sub: subprocess.Popen[bytes]) -> None:
        assert sub.stdout is not None
        partial = b""
        while data := sub.stdout.read1(1 << 16):  # type: ignore[attr-defined]
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            probes = lines.count(b"1")
            self.probes += probes
            self.messages += len(lines) - probes
            self.changed.set()
            if self.messages >= self._expected and self.done_at is None:
                self.done_at = time.time()
                self.complete.set()
