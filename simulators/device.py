"""One simulated tracker on the wire: its own MQTT connection, Last Will, reports, commands, outages.

This is shell code: it owns a connection and a clock, and delegates every decision (where the bike
is, what the payload is, which fault to play, what a command does) to the pure modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiomqtt
import numpy as np
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.config import CommandHabit, DeviceRole, report_interval, report_message
from simulators.encode import Format, encode_json_batches, topic_for
from simulators.faults import DUPLICATE, EXPECTED_REASON, FaultKind, Outgoing, choose, reject
from simulators.run import FleetRun
from simulators.vehicle import Reading, apply_command, initial_state, movement_rng, step

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 15.0)
REMEMBERED_COMMANDS = 1000  # ids a device remembers to recognise a resend
REPORT_AFTER = frozenset({"lock", "unlock", "locate", "set_speed_limit", "speed_limit"})


class DeviceSim:
    """Mutable holder of one device's shell state; `run()` is its whole life in a fleet run."""

    def __init__(self, run: FleetRun, role: DeviceRole, password: str | None) -> None:
        cfg = run.config
        self.run = run
        self.role = role
        self.password = password
        self.interval = report_interval(cfg, role)
        self.tick = 0
        self.start_offset = role.profile.index / cfg.connect_rate  # the fleet's connection ramp
        self.rng = movement_rng(cfg.seed, role.profile.index)
        self.fault_rng = np.random.default_rng([cfg.seed, role.profile.index, 3])
        self.net_rng = np.random.default_rng([cfg.seed, role.profile.index, 4])  # timing-dependent draws
        self.state = initial_state(cfg.city, cfg.behaviour, role.profile, self.rng, run.t0_sim)
        self.backlog: list[Reading] = []
        self.held: Outgoing | None = None  # an out-of-order report waiting to go after the next one
        self.offline_until = 0.0  # simulated time until which the device is off the network
        self.online_until = math.inf
        self.wake = asyncio.Event()
        self.failures = 0
        self.storm_hit = False
        self.online = False
        self.pending_acks: set[asyncio.Task[None]] = set()
        self.done_commands: OrderedDict[str, dict[str, Any]] = OrderedDict()  # id -> ack, to act once
        self._next_outage()

    # --- the device's life -----------------------------------------------------------------------

    async def run_forever(self) -> None:
        await self._nap_until(self.run.t0_sim + self.start_offset)
        first = True
        while not self.run.stopping:
            if self.run.sim_now() < self.offline_until:
                await self._stay_offline()
                continue
            if not (first or self.storm_hit):
                await self.run.ramp.wait()  # reconnects queue up, storms do not
            first = self.storm_hit = False
            try:
                await self._session()
                self.failures = 0
            except* aiomqtt.MqttError as group:
                self.failures += 1
                self.run.counters.errors += 1
                log.debug("%s: connection failed: %s", self.role.device_id, group.exceptions[0])
                low, high = RECONNECT_BACKOFF_S
                wait = min(high, low * 2 ** min(self.failures, 5)) * (0.5 + float(self.net_rng.random()))
                self.offline_until = self.run.sim_now() + wait

    async def _session(self) -> None:
        device = self.role.device_id
        status = f"fleet/{device}/status"
        client = aiomqtt.Client(
            self.run.host,
            self.run.port,
            username=device,
            password=self.password,
            identifier=device,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(status, b"offline", qos=1, retain=True),
            clean_start=False,  # keep the session: commands sent while offline wait in the broker
            properties=_connect_properties(self.run.config.session_expiry_s),
            keepalive=self.run.config.keepalive_s,
            timeout=30,
            tls_context=self.run.tls,
        )
        async with client:
            self.run.connected(+1)
            self.online = True
            try:
                await client.publish(status, b"online", qos=1, retain=True)
                await client.subscribe(f"fleet/{device}/cmd", qos=1)
                async with asyncio.TaskGroup() as tg:
                    commands = tg.create_task(self._commands(client, tg))
                    await self._flush_backlog(client)
                    ended_by = await self._report(client)
                    commands.cancel()
                    for task in self.pending_acks:
                        task.cancel()  # an ack not sent before the outage is lost; the server retries
                if ended_by == "stop":
                    await client.publish(status, b"offline", qos=1, retain=True)
                else:
                    _drop_with_will(client)
            finally:
                self.online = False
                self.run.connected(-1)

    async def _report(self, client: aiomqtt.Client) -> str:
        """Report on schedule until the run stops, an outage begins or a storm knocks us off."""
        while True:
            when = self.next_time()
            await self._nap_until(when)
            if self.run.stopping:
                return "stop"
            if self.storm_hit:
                return "storm"
            if when >= self.online_until:
                self.offline_until = when + self._draw(self.run.config.faults.offline_s)
                self._next_outage()
                return "outage"
            reading = self._advance(when)
            for out in self._messages_for(reading):
                if not await self._publish(client, out):
                    return "stop"
            if self.fault_rng.random() < self.run.config.faults.offline_batch:
                self.offline_until = when + self._draw(self.run.config.faults.offline_s)
                return "outage"

    async def _stay_offline(self) -> None:
        """Off the network the tracker keeps measuring and buffers what it cannot send."""
        while not self.run.stopping:
            when = self.next_time()
            if when >= self.offline_until:
                await self._nap_until(self.offline_until)
                return
            await self._nap_until(when)
            if self.run.stopping:
                return
            self.backlog.append(self._advance(when))

    # --- telemetry -------------------------------------------------------------------------------

    def next_time(self) -> float:
        return self.run.t0_sim + self.start_offset + (self.role.phase + self.tick) * self.interval

    def _advance(self, when: float) -> Reading:
        cfg = self.run.config
        self.tick += 1
        self.state, reading = step(cfg.city, cfg.behaviour, self.role.profile, self.state, when, self.rng)
        if self.role.skew_s:
            reading = _at(reading, reading.time + self.role.skew_s)
        return reading

    def _messages_for(self, reading: Reading) -> list[Outgoing]:
        """The report as its format encodes it, or a fault played in its place or around it."""
        faults = self.run.config.faults
        kind = choose(self.fault_rng, faults)
        if kind in EXPECTED_REASON:
            return [reject(kind, reading, self.role.device_id, self.role.peer, faults, self.fault_rng)]
        normal = self._encode(reading)
        out = [] if normal is None else [normal]
        if normal is not None and normal.records and kind is FaultKind.DUPLICATE:
            out.append(Outgoing(normal.topic, normal.payload, DUPLICATE, 0, kind))
        if self.held is not None:
            out.append(self.held)
            self.held = None
        if normal is not None and normal.records and kind is FaultKind.OUT_OF_ORDER:
            self.held = Outgoing(normal.topic, normal.payload, normal.expect, normal.records, kind)
            out.remove(normal)
        return out

    def _encode(self, reading: Reading) -> Outgoing | None:
        return report_message(self.role, reading)

    async def _flush_backlog(self, client: aiomqtt.Client) -> None:
        """Send what was buffered while offline: JSON trackers as batches, others newest first."""
        backlog, self.backlog = self.backlog, []
        if self.held is not None:
            backlog_out = [self.held]
            self.held = None
        else:
            backlog_out = []
        if self.role.fmt is Format.JSON and backlog:
            topic = topic_for(Format.JSON, self.role.device_id)
            cfg = self.run.config
            for payload in encode_json_batches(
                backlog, self.role.device_id, epoch_ts=self.role.epoch_ts, max_bytes=cfg.max_payload_bytes
            ):
                n = payload.count(b'"ts":')
                backlog_out.append(Outgoing(topic, payload, records=n, kind=FaultKind.OFFLINE_BATCH))
        else:
            encoded = (self._encode(r) for r in reversed(backlog))
            backlog_out.extend(o for o in encoded if o is not None)
        for out in backlog_out:
            if not await self._publish(client, out):
                return

    async def _publish(self, client: aiomqtt.Client, out: Outgoing) -> bool:
        if not self.run.take_ticket():
            return False
        await client.publish(out.topic, out.payload, qos=1)
        self.run.sent(out)
        return True

    # --- commands --------------------------------------------------------------------------------

    async def _commands(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        habit = self.role.habit
        async for message in client.messages:
            self.run.counters.commands += 1
            if habit is CommandHabit.DROP:
                self.run.counters.dropped_commands += 1
                continue
            ack, report = self._handle(message.payload)
            if ack is None:
                continue
            if report:
                await self._report_now(client)  # the new state (or the fix asked for) at once
            delay = self.run.config.slow_ack_delay_s if habit is CommandHabit.SLOW else self.run.config.ack_delay_s
            copies = 2 if habit is CommandHabit.TWICE else 1
            task = tg.create_task(self._ack_later(client, ack, delay, copies))
            self.pending_acks.add(task)
            task.add_done_callback(self.pending_acks.discard)

    def _handle(self, raw: Any) -> tuple[dict[str, Any] | None, bool]:
        """The ack for a v1 command (docs/protocol.md) and whether to report at once. A repeated id
        is acknowledged again with the first answer and not carried out twice."""
        try:
            cmd = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            self.run.counters.errors += 1
            return None, False
        if not isinstance(cmd, dict) or not isinstance(cmd.get("id"), str):
            self.run.counters.errors += 1
            return None, False
        command_id = cmd["id"]
        earlier = self.done_commands.get(command_id)
        if earlier is not None:
            return earlier, False
        action, params = cmd.get("action"), cmd.get("params") or {}
        report = False
        if not isinstance(action, str) or not isinstance(params, dict):
            result, detail = "rejected", "action must be a string and params an object"
        elif _expired(cmd.get("expires"), time.time()):
            result, detail = "rejected", "expired"
        elif self.role.habit is CommandHabit.REJECT:
            result, detail = "rejected", "refused (simulated device)"
        else:
            behaviour, now = self.run.config.behaviour, self.run.sim_now()
            self.state, result, detail = apply_command(behaviour, self.state, action, params, now)
            report = result == "ok" and action in REPORT_AFTER
        ack = {"v": 1, "id": command_id, "result": result, "detail": detail}
        self.done_commands[command_id] = ack
        while len(self.done_commands) > REMEMBERED_COMMANDS:
            self.done_commands.popitem(last=False)
        return ack, report

    async def _report_now(self, client: aiomqtt.Client) -> None:
        cfg = self.run.config
        self.state, reading = step(cfg.city, cfg.behaviour, self.role.profile, self.state, self.run.sim_now(), self.rng)
        if self.role.skew_s:
            reading = _at(reading, reading.time + self.role.skew_s)
        out = self._encode(reading)
        if out is not None:
            await self._publish(client, out)

    async def _ack_later(self, client: aiomqtt.Client, ack: dict[str, Any], delay: float, copies: int) -> None:
        await asyncio.sleep(delay)
        for _ in range(copies):
            await client.publish(f"fleet/{self.role.device_id}/cmd/ack", orjson.dumps(ack), qos=1)
            self.run.counters.acks += 1

    # --- timing ----------------------------------------------------------------------------------

    async def _nap_until(self, sim_time: float) -> None:
        """Sleep until a simulated instant, woken early by the end of the run or a storm."""
        delay = self.run.wall_delay(sim_time)
        if delay <= 0 or self.run.stopping or self.storm_hit:
            return
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.wake.wait()

    def hit_by_storm(self) -> None:
        if self.online and self.net_rng.random() < self.run.config.faults.storm_share:
            self.storm_hit = True
            self.wake.set()

    def _next_outage(self) -> None:
        if self.role.habit is CommandHabit.OFFLINE:
            self.online_until = max(self.run.sim_now(), self.offline_until) + self._draw(self.run.config.online_s)

    def _draw(self, bounds: tuple[float, float]) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * float(self.fault_rng.random())


def _at(reading: Reading, t: float) -> Reading:
    return replace(reading, time=t)


def _connect_properties(session_expiry_s: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    return props


def _drop_with_will(client: aiomqtt.Client) -> None:
    """Leave the way a tracker losing coverage does: the broker publishes our Last Will.

    MQTT 5 says so with DISCONNECT reason 0x04. aiomqtt has no public way to send a reason code,
    so this reaches its paho client; aiomqtt's own exit then finds the connection already closed.
    """
    paho = client._client
    paho.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))


def _expired(expires_at: object, now: float) -> bool:
    if not isinstance(expires_at, str):
        return False
    try:
        return datetime.fromisoformat(expires_at).timestamp() < now
    except ValueError:
        return False
