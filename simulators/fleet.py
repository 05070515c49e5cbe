"""Run a simulated fleet through a real broker: `run_fleet(config, ...) -> SimSummary`.

Each device is one asyncio task with its own MQTT connection (see `simulators.device`). This module
owns what they share: the simulated clock, the reconnect ramp, the `--count` budget, the storm
signal, the counters and the stop that always comes (duration or count).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import resource
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulators.config import SimConfig, device_id, role
from simulators.device import DeviceSim
from simulators.faults import Ledger, Outgoing

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
STOP_GRACE_S = 15.0  # how long devices get to say `offline` and disconnect cleanly at the end
FDS_PER_DEVICE = 1  # aiomqtt drives paho without its wake-up socket pair: one socket each


class FleetError(RuntimeError):
    """The fleet could not run at all (for example: the process may not open enough sockets)."""


@dataclass(frozen=True, slots=True)
class Progress:
    elapsed_s: float
    sent: int
    rate: float  # messages per second since the previous progress report
    acks: int
    errors: int
    connected: int


@dataclass(frozen=True, slots=True)
class SimSummary:
    """What the run did, and what the gateway should have made of it."""

    devices: int
    elapsed_s: float
    messages: int
    rate: float
    stored_records: int  # records the store should hold from this run
    duplicates: int  # resends that must not add rows
    no_fix: int  # NMEA epochs without a fix: counted by the gateway, not stored, not dead-lettered
    rejects: Mapping[str, int]  # expected dead letters by reason
    acl_denied: int  # publishes on a foreign topic, refused by the broker
    faults: Mapping[str, int]  # injected faults by kind
    commands: int
    acks: int
    dropped_commands: int
    connects: int
    peak_connected: int
    errors: int


@dataclass(slots=True)
class Counters:
    sent: int = 0
    acks: int = 0
    commands: int = 0
    dropped_commands: int = 0
    errors: int = 0
    connects: int = 0
    connected: int = 0
    peak_connected: int = 0
    ledger: Ledger = field(default_factory=Ledger)


class _Ramp:
    """Spaces reconnects `1/rate` apart fleet-wide so outages do not turn into a connect storm."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self._gap
        if slot > now:
            await asyncio.sleep(slot - now)


class FleetRun:
    """State shared by the device tasks of one run."""

    def __init__(self, config: SimConfig, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.tls = tls  # MQTT over TLS when given; one context shared by every device
        self.t0_wall = time.time()
        self.t0_sim = config.start_time if config.start_time is not None else self.t0_wall
        self.ramp = _Ramp(config.connect_rate)
        self.counters = Counters()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.remaining = config.count
        self.devices: list[DeviceSim] = []

    def sim_now(self) -> float:
        return self.t0_sim + (time.time() - self.t0_wall)

    def wall_delay(self, sim_time: float) -> float:
        return sim_time - self.sim_now()

    def take_ticket(self) -> bool:
        """One message off the `--count` budget; the last ticket stops the run."""
        if self.stopping:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                self.stop()
                return False
            self.remaining -= 1
            if self.remaining == 0:
                self.stopping = True  # this message still goes; wake the others after it
        return True

    def sent(self, out: Outgoing) -> None:
        self.counters.sent += 1
        self.counters.ledger.add(out)
        if self.remaining == 0:
            self.stop()

    def connected(self, delta: int) -> None:
        c = self.counters
        c.connected += delta
        if delta > 0:
            c.connects += 1
            c.peak_connected = max(c.peak_connected, c.connected)

    def stop(self) -> None:
        self.stopping = True
        self.stopped.set()
        for device in self.devices:
            device.wake.set()

    def storm(self) -> None:
        for device in self.devices:
            device.hit_by_storm()

    def progress(self, last_sent: int, span_s: float) -> Progress:
        c = self.counters
        rate = (c.sent - last_sent) / span_s if span_s > 0 else 0.0
        return Progress(time.time() - self.t0_wall, c.sent, rate, c.acks, c.errors, c.connected)

    def summary(self) -> SimSummary:
        c, ledger = self.counters, self.counters.ledger
        elapsed = time.time() - self.t0_wall
        return SimSummary(
            devices=self.config.devices,
            elapsed_s=elapsed,
            messages=c.sent,
            rate=c.sent / elapsed if elapsed > 0 else 0.0,
            stored_records=ledger.stored_records,
            duplicates=ledger.duplicates,
            no_fix=ledger.no_fix,
            rejects=dict(ledger.rejects),
            acl_denied=ledger.acl_denied,
            faults=dict(ledger.faults),
            commands=c.commands,
            acks=c.acks,
            dropped_commands=c.dropped_commands,
            connects=c.connects,
            peak_connected=c.peak_connected,
            errors=c.errors,
        )


async def run_fleet(
    config: SimConfig,
    *,
    mqtt_host: str,
    mqtt_port: int,
    credentials: Mapping[str, str],
    on_progress: Callable[[Progress], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> SimSummary:
    """Run the fleet until `duration_s` has passed or `count` messages are out, whichever is first.

    `credentials` maps device id to MQTT password; ids missing from it connect without a password
    (fine for a broker that allows anonymous clients, refused and retried otherwise). `tls`: every
    device connects over TLS with this context.
    """
    raise_open_files(config.devices * FDS_PER_DEVICE + 256)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(functools.partial(_quiet_closed_socket_races, previous_handler))
    try:
        return await _run(config, mqtt_host, mqtt_port, credentials, on_progress, tls)
    finally:
        loop.set_exception_handler(previous_handler)


async def _run(
    config: SimConfig,
    mqtt_host: str,
    mqtt_port: int,
    credentials: Mapping[str, str],
    on_progress: Callable[[Progress], None] | None,
    tls: ssl.SSLContext | None,
) -> SimSummary:
    run = FleetRun(config, mqtt_host, mqtt_port, tls)
    run.devices = [
        DeviceSim(run, role(config, i), credentials.get(device_id(config, i))) for i in range(config.devices)
    ]
    tasks = [asyncio.create_task(d.run_forever(), name=d.role.device_id) for d in run.devices]
    watcher = asyncio.create_task(_watch(run, on_progress))
    try:
        done = asyncio.gather(*tasks)
        await _until_stopped(run, done)
    finally:
        watcher.cancel()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, watcher, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                run.counters.errors += 1
                log.warning("device task failed: %r", result)
    return run.summary()


async def _until_stopped(run: FleetRun, devices_done: asyncio.Future[list[None]]) -> None:
    """Wait for the duration or the count, then give devices a grace period to sign off."""
    deadline = run.config.duration_s
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline):
            await run.stopped.wait()
    run.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_GRACE_S):
            await asyncio.shield(devices_done)


async def _watch(run: FleetRun, on_progress: Callable[[Progress], None] | None) -> None:
    """Progress reports and reconnect storms, once a second."""
    storm_p = run.config.faults.reconnect_storm
    rng = np.random.default_rng([run.config.seed, 2**32 - 1])
    last_sent, last_t = 0, time.time()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.time()
        if on_progress is not None:
            on_progress(run.progress(last_sent, now - last_t))
        last_sent, last_t = run.counters.sent, now
        if storm_p and rng.random() < storm_p and not run.stopping:
            log.info("reconnect storm")
            run.counters.ledger.faults["reconnect_storm"] += 1
            run.storm()


def _quiet_closed_socket_races(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    """aiomqtt schedules `add_writer` for a socket that paho may close first (a DISCONNECT is written
    at once, then the socket closed). With thousands of devices signing off together a few hundred
    such callbacks fail with EBADF; they are harmless, so they go to DEBUG, everything else as usual."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno == errno.EBADF and "add_writer" in repr(context.get("handle")):
        log.debug("late add_writer on a closed MQTT socket ignored")
        return
    if previous is not None:
        previous(loop, context)
    else:
        loop.default_exception_handler(context)


def raise_open_files(needed: int) -> int:
    """Lift the soft open-files limit towards the hard one; 10,000 devices need 10,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise FleetError(f"{needed} open files needed, the hard limit is {hard}: raise it (ulimit -Hn)")
    return target
