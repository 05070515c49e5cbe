"""What the device tasks of one simulated run share: the simulated clock, the reconnect ramp, the
`--count` budget, the storm signal, the counters, and the summary they add up to.

Kept apart from `simulators.fleet` (which starts the devices) so that a device can know its run
without the run knowing what a device is: the run holds its members by the two things it asks of
them (`Member`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from simulators.config import SimConfig
from simulators.faults import Ledger, Outgoing


class Member(Protocol):
    """A device task as its run sees it: woken to stop, hit by a storm."""

    wake: asyncio.Event

    def hit_by_storm(self) -> None: ...


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
        self.devices: list[Member] = []

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
