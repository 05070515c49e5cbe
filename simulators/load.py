"""Load mode for the ingest benchmark: a fixed total of records at a fixed rate, as fast as it goes.

No movement model here: payloads are generated up front (valid v1 records with distinct
(device, time) pairs, so every one is stored once) and split over a few publisher processes, one
connection each, QoS 1 with a wide in-flight window (`simulators.wire`). Each process waits for
the last PUBACK before it disconnects, so "sent" means "the broker has it". paho tops out near
5,000 QoS 1 messages/s per process here and `mosquitto_pub -l` publishes to one topic only (and
drops what is unsent when its input closes); docs/simulators.md has the measurements.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import orjson

from simulators.city import METRES_PER_DEG_LAT, City
from simulators.encode import Format, encode_nmea, encode_owntracks, record, topic_for
from simulators.vehicle import Reading
from simulators.wire import QoS1Publisher, WireError

INFLIGHT = 4000  # unacknowledged messages per connection


class LoadError(RuntimeError):
    """The load could not be generated or delivered (bad arguments, refused connection, lost acks)."""


@dataclass(frozen=True, slots=True)
class LoadSummary:
    records: int
    messages: int
    acked: int
    processes: int
    elapsed_s: float  # first publish to last PUBACK, over all processes
    rate_msgs: float
    rate_records: float
    bytes: int


@dataclass(frozen=True, slots=True)
class _Share:
    host: str
    port: int
    username: str | None
    password: str | None
    client_id: str
    devices: tuple[int, ...]
    records_per_device: tuple[int, ...]
    rate: float  # messages per second for this process; 0 = unpaced
    fmt: str
    batch: int
    t_base: float
    seed: int
    tls: bool = False  # an SSL context does not cross processes: each publisher builds its own
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class _Result:
    messages: int
    acked: int
    first: float
    last: float
    bytes: int


def run_load(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    total: int,
    rate: float,
    devices: int,
    fmt: str,
    batch: int = 1,
    *,
    processes: int | None = None,
    seed: int = 1,
    id_prefix: str = "load-",
    tls: bool = False,
    ca_file: str | None = None,
) -> LoadSummary:
    """Publish `total` records from `devices` device ids at `rate` messages/s (0 = flat out).

    `batch` > 1 packs that many records into one v1 batch message (JSON only). Records carry
    past timestamps one second apart per device, so none is refused as future or collapsed as a
    duplicate. The broker user needs publish rights on every `fleet/{id}/...` (or
    `owntracks/{id}/...`) topic of the `id_prefix` devices. `tls`: MQTT over TLS, the broker's
    certificate checked against `ca_file` (default: the system's trusted CAs).
    """
    _check(total, rate, devices, fmt, batch)
    n_proc = max(1, min(processes or 1, devices))
    per_device = [total // devices + (1 if i < total % devices else 0) for i in range(devices)]
    t_base = math.floor(time.time()) - max(per_device) - 60  # the newest record is a minute old
    shares = [
        _Share(
            host,
            port,
            username,
            password,
            f"{username or 'load'}-pub-{p}",
            tuple(range(p, devices, n_proc)),
            tuple(per_device[p::n_proc]),
            rate / n_proc,
            fmt,
            batch,
            t_base,
            seed,
            tls,
            ca_file,
        )
        for p in range(n_proc)
        if p < devices
    ]
    prefix_ok = all(c.isalnum() or c in "_.-" for c in id_prefix) and id_prefix[:1].isalnum()
    if not prefix_ok:
        raise LoadError(f"id prefix {id_prefix!r} does not make valid device ids")
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_publish_share, shares, [id_prefix] * len(shares)))
    messages = sum(r.messages for r in results)
    acked = sum(r.acked for r in results)
    elapsed = max(r.last for r in results) - min(r.first for r in results)
    if acked < messages:
        raise LoadError(f"only {acked} of {messages} messages were acknowledged")
    return LoadSummary(
        records=total,
        messages=messages,
        acked=acked,
        processes=len(shares),
        elapsed_s=elapsed,
        rate_msgs=messages / elapsed if elapsed > 0 else math.inf,
        rate_records=total / elapsed if elapsed > 0 else math.inf,
        bytes=sum(r.bytes for r in results),
    )


def _check(total: int, rate: float, devices: int, fmt: str, batch: int) -> None:
    if total < 1 or devices < 1 or devices > 100_000:
        raise LoadError("total must be >= 1 and devices 1..100000")
    if not (math.isfinite(rate) and rate >= 0):
        raise LoadError("rate must be >= 0 messages per second (0 = as fast as possible)")
    if fmt not in {f.value for f in Format}:
        raise LoadError(f"load format must be json, nmea or owntracks, got {fmt!r}")
    if not 1 <= batch <= 1000 or (batch > 1 and fmt != Format.JSON):
        raise LoadError("batch must be 1..1000, and above 1 only for json")


def payloads(share: _Share, id_prefix: str) -> Iterator[tuple[str, bytes]]:
    """Messages for one share, devices interleaved so that per-device order is kept."""
    city = City()
    rng = np.random.default_rng([share.seed, share.devices[0] if share.devices else 0, 9])
    fmt = Format(share.fmt)
    streams = [
        _device_messages(city, rng, f"{id_prefix}{d:05d}", n, fmt, share.batch, share.t_base)
        for d, n in zip(share.devices, share.records_per_device, strict=True)
    ]
    while streams:
        alive = []
        for stream in streams:
            item = next(stream, None)
            if item is not None:
                yield item
                alive.append(stream)
        streams = alive


def _device_messages(
    city: City, rng: np.random.Generator, device: str, n: int, fmt: Format, batch: int, t_base: float
) -> Iterator[tuple[str, bytes]]:
    """A device wandering a few metres per record; the walk is drawn for all records at once."""
    topic = topic_for(fmt, device)
    walk = rng.normal(0.0, 4.0, size=(n, 2)).cumsum(axis=0) + np.array([city.width_m, city.height_m]) / 2
    lon = (city.lon_min + walk[:, 0] / city.metres_per_deg_lon).round(7).tolist()
    lat = (city.lat_min + walk[:, 1] / METRES_PER_DEG_LAT).round(7).tolist()
    records: list[bytes] = []
    for k in range(n):
        reading = Reading(
            time=t_base + k, lat=lat[k], lon=lon[k], alt_m=34.0, speed_kmh=15.0,
            heading_deg=90.0, acc_m=4.0, fix=3, sats=9, hdop=0.9, battery_pct=80.0,
            odometer_m=1000.0 + 5.0 * k, locked=False, faults=(), alarm=False,
        )  # fmt: skip
        if fmt is Format.NMEA:
            yield topic, encode_nmea(reading)
        elif fmt is Format.OWNTRACKS:
            yield topic, encode_owntracks(reading, "ld") or b""
        elif batch == 1:
            yield topic, orjson.dumps(record(reading, device, epoch_ts=True))
        else:
            records.append(orjson.dumps(record(reading, None, epoch_ts=True, single=False)))
            if len(records) == batch or k == n - 1:
                yield topic, b'{"v":1,"records":[' + b",".join(records) + b"]}"
                records = []


def _publish_share(share: _Share, id_prefix: str) -> _Result:
    """One publisher process: generate everything first, then publish paced and wait for the acks."""
    messages = list(payloads(share, id_prefix))
    if not messages:
        now = time.time()
        return _Result(0, 0, now, now, 0)
    try:
        context = ssl.create_default_context(cafile=share.ca_file) if share.tls else None
        publisher = QoS1Publisher(share.host, share.port, share.client_id, share.username, share.password, context)
    except (WireError, OSError) as exc:
        raise LoadError(str(exc)) from None
    try:
        first, last = publisher.publish_all(messages, rate=share.rate, window=INFLIGHT)
    except WireError as exc:
        raise LoadError(f"{share.client_id}: {exc}") from None
    finally:
        publisher.close()
    return _Result(len(messages), publisher.acked, first, last, sum(len(p) for _, p in messages))
